"""``--download``: the official archives of a dataset, checked against their published checksums,
resumed where a partial download stopped, unpacked where they are archives.

A download goes to ``<file>.part`` and continues from its size with an HTTP ``Range`` request (a
server that ignores it sends the whole file, which then starts over); once complete its checksum
is checked, and only a matching file takes its final name. Archives (``.tar.gz``, ``.tgz``,
``.zip``) are unpacked beside it, refusing members that would land outside the folder or are
links. Offline, or on any failure, the error is one line naming the file, where it comes from and
the folder to put it in by hand.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ddbench.errors import TaskDataError

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Archive:
    """One file a dataset publishes: its URL, its checksum (``md5`` or ``sha256``, as published) and
    whether it is unpacked into the folder it lands in."""

    url: str
    checksum: str
    algorithm: str = "md5"
    unpack: bool = False

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?")[0]).name


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(archive: Archive, folder: Path) -> Path:
    """``archive`` in ``folder``: kept if present with the right checksum, else downloaded (resuming a
    ``.part`` file), checked, and unpacked if it is an archive. Returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / archive.filename
    if not (target.is_file() and digest(target, archive.algorithm) == archive.checksum):
        _download(archive, target)
    if archive.unpack:
        unpack(target, folder)
    return target


def _download(archive: Archive, target: Path) -> None:
    from tqdm import tqdm

    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            resumed = offset > 0 and getattr(response, "status", None) == 206
            length = response.headers.get("Content-Length")
            total = int(length) + (offset if resumed else 0) if length else None
            with part.open("ab" if resumed else "wb") as out, tqdm(total=total, initial=offset if resumed else 0, unit="B",
                                                                  unit_scale=True, desc=f"downloading {archive.filename}",
                                                                  file=sys.stderr, leave=False) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TaskDataError(f"could not download {archive.filename} from {archive.url} ({reason}): put {archive.filename} "
                            f"in {target.parent} by hand (it is checked, then used), or retry --download, which resumes.") from None
    found = digest(part, archive.algorithm)
    if found != archive.checksum:
        part.unlink()
        raise TaskDataError(f"{archive.filename} from {archive.url} has {archive.algorithm} {found}, not the published "
                            f"{archive.checksum}: the partial file was deleted; retry --download.")
    part.replace(target)


def unpack(path: Path, folder: Path) -> None:
    """Unpack a ``.tar.gz``/``.tgz`` or ``.zip`` archive into ``folder``, every member checked to stay inside it."""
    root = folder.resolve()

    def inside(name: str) -> None:
        if not (root / name).resolve().is_relative_to(root):
            raise TaskDataError(f"archive {path} has a member {name!r} that would land outside {folder}: refused; "
                                "fetch the archive again.")
    try:
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(path) as tar:
                members = tar.getmembers()
                for member in members:
                    inside(member.name)
                    if not (member.isfile() or member.isdir()):
                        raise TaskDataError(f"archive {path} has a link or device member {member.name!r}: refused; fetch it again.")
                for member in members:
                    if member.isdir():
                        (folder / member.name).mkdir(parents=True, exist_ok=True)
                        continue
                    (folder / member.name).parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file member
                    with source, (folder / member.name).open("wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    inside(name)
                zf.extractall(folder)
        else:
            raise TaskDataError(f"{path} is no archive this reader unpacks (.tar.gz, .tgz, .zip).")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise TaskDataError(f"archive {path} could not be unpacked ({exc}): it is damaged; delete it and retry --download.") from None
