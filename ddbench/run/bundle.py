"""Result bundles: one file holding a cell's artifact and what was claimed of it, which anyone can
re-score (``ddbench bundle``, ``ddbench verify``; docs/import.md).

A bundle is a zip of data files only, never a pickle: ``artifact.safetensors`` and its JSON
sidecar ``artifact.json`` (recipe, meta with an import's manifest, the cell, the content hash),
``claims.json`` (the cell's stored result: every evaluation net's metric, the random reference,
the recipe it trained with, the counted storage, provenance) and ``bundle.json`` (what the bundle
is, the artifact's hash, the recipe and the provenance of the claim). :func:`verify` trains the
claimed cell's evaluation nets again on the bundled artifact, through the harness's own admission
and scoring (the artifact stands in for the distillation: nothing is distilled again), and judges
the claim as ``ddbench compare --significance`` judges a change: the claim stands unless the
re-scored metric falls short of it past the limit with the whole confidence interval.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from ddbench import __version__
from ddbench.budget.artifact import content_hash, load
from ddbench.errors import StoreError
from ddbench.plugins import PluginManager
from ddbench.results.compare import Rule, compare, default_rules
from ddbench.results.provenance import provenance
from ddbench.results.records import aggregate, check_record, directions, result_from_dict, result_to_dict

FORMAT = "ddbench-bundle"
VERSION = 1
MEMBERS = ("bundle.json", "artifact.safetensors", "artifact.json", "claims.json")
MAX_BYTES = 8 << 30  # the largest member a bundle may hold, uncompressed


def bundle(artifact: Path, records: list[dict[str, Any]], out: Path) -> Path:
    """Write the bundle of the saved ``artifact`` (``ddbench run --save-artifacts``) and its cell's
    stored record, found by the key in the artifact's sidecar among ``records``."""
    artifact = artifact.with_suffix(".safetensors")
    sidecar_path = artifact.with_suffix(".json")
    load(artifact)  # a readable safetensors file matching its sidecar's hash, or a one-line error
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    key = (sidecar.get("info") or {}).get("key")
    if not key:
        raise StoreError(f"{artifact.name!r} records no cell: bundle an artifact that a run saved (ddbench run --save-artifacts DIR), "
                         "e.g. an imported one scored with --distiller file:path=...")
    claims = [r for r in records if r.get("key") == key]
    if not claims:
        raise StoreError(f"the store holds no result of cell {key} that {artifact.name!r} was saved by: pass the --store it ran into.")
    if claims[0]["status"] != "ok":
        raise StoreError(f"cell {key} of {artifact.name!r} did not finish ({claims[0]['status']}): there is no result to claim.")
    claim = claims[0]
    about = {"format": FORMAT, "version": VERSION, "ddbench": __version__, "artifact_sha256": sidecar.get("sha256"),
             "cell": claim["config"], "recipe": claim.get("recipe", {}), "provenance": claim.get("provenance", {}),
             "claimed": {"metric": claim["metric"], "values": claim["values"], "random_ref": claim.get("random_ref"),
                         "stored_params": claim.get("stored_params")}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("bundle.json", json.dumps(about, indent=1, sort_keys=True) + "\n", zipfile.ZIP_DEFLATED)
        z.write(artifact, "artifact.safetensors", zipfile.ZIP_STORED)
        z.writestr("artifact.json", json.dumps(sidecar, indent=1, sort_keys=True) + "\n", zipfile.ZIP_DEFLATED)
        z.writestr("claims.json", json.dumps([claim], indent=1, sort_keys=True) + "\n", zipfile.ZIP_DEFLATED)
    return out


def open_bundle(path: Path, into: Path) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """The bundle's description, its claimed records (checked) and its artifact written under ``into``."""
    if not path.is_file():
        raise StoreError(f"bundle {str(path)!r} not found.")
    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(z.namelist())
            if names != sorted(MEMBERS):
                raise StoreError(f"{path.name!r} holds {', '.join(names)}, not a ddbench bundle's {', '.join(MEMBERS)}.")
            big = [i.filename for i in z.infolist() if i.file_size > MAX_BYTES]
            if big:
                raise StoreError(f"{path.name!r} member {big[0]!r} is larger than {MAX_BYTES >> 30} GiB: not a bundle ddbench reads.")
            about = json.loads(z.read("bundle.json"))
            claims = json.loads(z.read("claims.json"))
            (into / "artifact.safetensors").write_bytes(z.read("artifact.safetensors"))
            (into / "artifact.json").write_bytes(z.read("artifact.json"))
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise StoreError(f"{path.name!r} is not a readable ddbench bundle ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(about, dict) or about.get("format") != FORMAT:
        raise StoreError(f"{path.name!r} is not a ddbench bundle (its bundle.json does not say format {FORMAT!r}).")
    if not isinstance(claims, list) or len(claims) != 1:
        raise StoreError(f"{path.name!r} claims.json holds no single result record.")
    return about, [check_record(claims[0], f"the claim of {path.name!r}")], into / "artifact.safetensors"


def verify(path: Path, manager: PluginManager, device: str = "auto", alpha: float = 0.05,
           rules: list[str] | None = None) -> tuple[str, bool]:
    """Re-score the bundle at ``path`` and judge its claim: the text to print and whether it stands."""
    from ddbench.run.harness import Distilled, Harness
    from ddbench.run.worker import DistillReply

    with tempfile.TemporaryDirectory(prefix="ddbench-verify-") as tmp:
        about, (claim,), artifact_path = open_bundle(path, Path(tmp))
        artifact = load(artifact_path)  # the content hash in the sidecar is checked
    if about.get("artifact_sha256") != content_hash(artifact):
        raise StoreError(f"{path.name!r} bundles another artifact than its bundle.json names (content hash differs).")
    claimed = result_from_dict(claim)
    cell = claimed.cell
    if cell.distiller not in manager.distillers:
        raise StoreError(f"the claimed cell's distiller {cell.distiller!r} is not installed here: install its plugin to verify it.")
    harness = Harness(manager, device)
    reply = DistillReply("ok", tensors=artifact.tensors, recipe=artifact.recipe, meta=artifact.meta,
                         distill_s=claimed.distill_s, peak_mb=claimed.peak_mb)
    result = harness.run_cell(cell, distilled={cell.distillation(): Distilled(reply)})
    record = {**result_to_dict(result), "key": cell.key(), "provenance": provenance(manager),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    lines = [(f"{path.name}: {cell.label}, claimed {claim['metric']} {claimed.mean:.4f} ± {claimed.std:.4f} over "
              f"{len(claimed.values)} nets ({claim.get('device') or '?'}, ddbench {about.get('ddbench', '?')}).")]
    if result.status != "ok":
        lines.append(f"the claim does not stand: re-scoring the bundled artifact {result.status}: {result.error}")
        return "\n".join(lines), False
    lines.append(f"re-scored: {result.metric} {result.mean:.4f} ± {result.std:.4f} over {len(result.values)} nets on {result.device}"
                 f"{'' if result.device == claim.get('device') else ' (another device than the claim: expect its noise)'}.")
    old, new = aggregate([claim]), aggregate([record])
    known = directions(old + new)
    chosen = [Rule.parse(r, known) for r in rules] if rules else default_rules(known)
    chosen = [r for r in chosen if not math.isnan(old[0].value(r.metric))] if old else chosen  # the claim's metrics only
    table, regressions = compare(old, new, chosen, alpha)
    lines.append(table)
    counted = result.stored_params == claimed.stored_params
    if not counted:
        lines.append(f"the harness counts {result.stored_params} stored params, the claim {claimed.stored_params}.")
    stands = regressions == 0 and counted
    limits = ", ".join(f"{r.metric}:{r}" for r in chosen)
    lines.append(f"the claim {'stands' if stands else 'does not stand'}: re-scored against it with Welch's t-test over the "
                 f"evaluation nets at level {alpha:g}, limit {limits} (as ddbench compare --significance {alpha:g}).")
    return "\n".join(lines), stands
