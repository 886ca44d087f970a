"""Running analyses (:mod:`ddbench.contracts.analysis`) on saved artifacts: ``ddbench analyze`` and a suite's
``analyses`` (``docs/analyses.md``). A failing analysis is a failed row; the others go on."""
from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddbench.budget import artifact as artifacts
from ddbench.budget import labels
from ddbench.contracts.analysis import Analysis, Outcome, Subject
from ddbench.contracts.interfaces import Artifact, Split, Task, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.errors import SuiteError, one_line
from ddbench.ops.cache import cache_key, fingerprint
from ddbench.results.records import AnalysisRow

ANALYSIS_CACHE = "analyses"  # <cache_dir>/analyses/<key>.safetensors: the shared state analyses build once


class AnalysisContext:
    """The device, the cache of expensive shared state, and the progress callback of one analyze run."""

    def __init__(self, device: torch.device, cache_dir: Path | str = ".ddbench/cache",
                 progress: Callable[[str, int, int], None] | None = None):
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        self._progress = progress

    def progress(self, what: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(what, done, total)

    def cached(self, subject: Subject, what: str, config: dict[str, Any],
               build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Tensors ``build()`` returns, cached under (task and its train data, learner, ``what``,
        ``config``: the recipe, seeds and the analysis version), shared by every artifact of the task."""
        full = {"task": subject.view.name, "task_options": subject.view.options, "train": fingerprint(subject.view.train),
                "learner": subject.learner_spec, "what": what, **config}
        _, key = cache_key(full)
        path = self.cache_dir / ANALYSIS_CACHE / f"{what}-{key}.safetensors"
        if path.is_file():
            self.hits += 1
            return {k: v.to(self.device) for k, v in load_file(str(path)).items()}
        self.misses += 1
        tensors = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)
        return tensors


def labelled(subject: Subject) -> Artifact:
    """The subject's artifact with its labels materialised (class-balanced when it stores none)."""
    return artifacts.with_labels(subject.artifact, subject.view.num_classes)


def check_outcome(analysis: Analysis, outcome: Any) -> dict[str, dict[str, Any]]:
    """The declaration of each returned metric; an undeclared or non-finite metric is an error."""
    if not isinstance(outcome, Outcome):
        raise TypeError(f"analysis {analysis.name!r} returned {type(outcome).__name__}, not a ddbench.contracts.analysis.Outcome")
    declared = {}
    for key, value in outcome.metrics.items():
        metric = next((m for m in analysis.metrics if m.covers(key)), None)
        if metric is None:
            raise ValueError(f"analysis {analysis.name!r} returned metric {key!r}, which it does not declare in `metrics`")
        if not isinstance(value, (bool, int, float)) or (not isinstance(value, bool) and not math.isfinite(value)):
            raise ValueError(f"analysis {analysis.name!r} returned {key}={value!r}: metrics are finite numbers or booleans")
        declared[key] = {"unit": metric.unit, "higher_is_better": metric.higher_is_better, "version": analysis.version}
    return declared


def run_analysis(analysis: Analysis, spec: str, subject: Subject, context: AnalysisContext,
                 out_dir: Path | None = None) -> AnalysisRow:
    """Run one analysis on one subject; any failure becomes a failed row with its error."""
    row = AnalysisRow(subject.key, analysis.name, spec, analysis.version, subject.view.name, subject.distiller, subject.label)
    start = time.perf_counter()
    try:
        regime = labels.regime(subject.artifact.tensors, subject.artifact.recipe)
        if regime not in analysis.regimes:
            row.status, row.error = "skipped", (f"analysis {analysis.name!r} reads {'/'.join(analysis.regimes)} labels; "
                                                f"the artifact is in the {regime} regime")
            return row
        outcome = analysis.analyze(subject, context)
        row.declared = check_outcome(analysis, outcome)
        row.metrics, row.info = dict(outcome.metrics), json.loads(json.dumps(outcome.info, default=str))
        if outcome.tensors and out_dir is not None:
            path = out_dir / f"{subject.key[:16]}-{spec_slug(spec)}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in outcome.tensors.items()}, str(path))
            row.tensors_path = str(path)
        row.status = "ok"
    except Exception as exc:  # noqa: BLE001 - a failing analysis fails its row only
        row.status, row.error = "failed", one_line(exc)[:1000]
        row.traceback = traceback.format_exc()[-8000:]
    finally:
        row.seconds = time.perf_counter() - start
    return row


def spec_slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in spec)


def parse_analyses(text: str | list[str]) -> list[str]:
    """``'mixing,recognition'`` or a list -> analysis specs (``name`` or ``name:key=value;...``)."""
    items = text if isinstance(text, list) else text.split(",")
    specs = [t.strip() for t in items if isinstance(t, str) and t.strip()]
    if not specs or len(specs) != len(items):
        raise SuiteError(f"analyses must be analysis names such as mixing,recognition (got {text!r}): see `ddbench ls analyses`.")
    return specs


# ------------------------------------------------------------------------------------------------
# Running analyses on saved artifacts (``ddbench analyze``, a suite's ``analyses``)
# ------------------------------------------------------------------------------------------------
def artifacts_dir(store_path: Path) -> Path:
    """Where ``ddbench run`` saves a suite's artifacts when the suite names analyses: ``<store>-artifacts``."""
    return store_path.parent / f"{store_path.stem}-artifacts"


def artifact_files(paths: list[Path]) -> list[Path]:
    """The ``.safetensors`` artifacts of files and folders (a folder: its artifacts in name order)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.glob("*.safetensors"))
        elif path.suffix == ".safetensors" and path.is_file():
            files.append(path)
        else:
            raise SuiteError(f"{str(path)!r} is not an artifact file or folder: pass .safetensors files saved by "
                             "`ddbench run --save-artifacts DIR`, or DIR.")
    return files


def build_analyses(manager: Any, specs: list[str], size: str | None = None, protocol: str | None = None) -> list[tuple[str, Analysis]]:
    """(canonical spec, instance) for each spec; ``size``/``protocol`` apply where a spec does not set
    them. Unknown names and bad options are one-line errors before anything runs."""
    from ddbench.plugins import instantiate, parse_named

    built = []
    for spec in specs:
        name, options = parse_named(spec)
        cls = manager.analyses.get(name)
        for key, value in (("size", size), ("protocol", protocol)):
            if value is not None:
                options.setdefault(key, value)
        built.append((name + "".join(f":{k}={v}" if i == 0 else f",{k}={v}" for i, (k, v) in enumerate(sorted(options.items()))),
                      instantiate(cls, options)))
    return built


CELL_RECORD = ("task", "task_options", "distiller", "seed", "learner", "learner_options", "profile")
"""What an analysis reads of the cell record in a saved artifact's sidecar (``info.cell``)."""


def artifact_info(path: Path) -> dict[str, Any]:
    """The ``info`` of the sidecar of the artifact ``path`` (:func:`ddbench.budget.artifact.read_sidecar`),
    with the cell record and the evaluation recipe an analysis needs; else a one-line error."""
    info = artifacts.read_sidecar(path).get("info", {})
    cell = info.get("cell")
    if not isinstance(cell, dict) or not isinstance(info.get("recipe"), dict) or any(k not in cell for k in CELL_RECORD):
        raise SuiteError(f"artifact {path.name!r} has no cell record in its sidecar: analyse artifacts saved by "
                         "`ddbench run --save-artifacts DIR`.")
    try:
        Recipe(**info["recipe"])
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"artifact {path.name!r}: the recipe in its sidecar is not an evaluation recipe ({exc}): analyse artifacts "
                         "saved by `ddbench run --save-artifacts DIR`.") from None
    return info


class SubjectLoader:
    """Builds :class:`Subject` objects from saved artifacts, loading each task once."""

    def __init__(self, manager: Any, device: torch.device):
        self.manager, self.device = manager, device
        self._tasks: dict[str, tuple[Task, TaskView, Split]] = {}

    def load(self, path: Path, info: dict[str, Any]) -> Subject:
        """The subject of the artifact ``path`` whose sidecar's ``info`` is :func:`artifact_info`."""
        from ddbench.plugins import instantiate
        from ddbench.run.suite import load_task

        cell = info["cell"]
        artifact = artifacts.load(path)
        key = json.dumps([cell["task"], cell["task_options"], cell["profile"]], sort_keys=True, default=str)
        if key not in self._tasks:
            self._tasks[key] = load_task(self.manager, cell["task"], cell["task_options"], cell["profile"], self.device)
        task, view, test = self._tasks[key]
        learner = instantiate(self.manager.learners.get(cell["learner"]), cell["learner_options"], cell["profile"])
        spec = json.dumps([cell["learner"], cell["learner_options"], cell["profile"]], sort_keys=True, default=str)
        label = f"{cell['task']} / {cell['distiller']} / {cell.get('budget') or 'full'} / seed {cell['seed']}"
        return Subject(info.get("key", artifacts.content_hash(artifact)), label, artifact, task, view, test, learner, spec,
                       Recipe(**info["recipe"]), cell["distiller"])


def analyze(manager: Any, files: list[Path], analyses: list[tuple[str, Analysis]], store: Any, context: AnalysisContext,
            out_dir: Path, force: bool = False, on_row: Callable[[AnalysisRow], None] | None = None) -> list[AnalysisRow]:
    """Run every analysis on every artifact (native-protocol cells: a common cell shares its
    artifact), committing each row to ``store`` as it finishes; rows already there are kept unless
    ``force``. Every sidecar is checked first (:func:`artifact_info`): a bad one stops the run
    before any analysis runs."""
    loader = SubjectLoader(manager, context.device)
    infos = {path: artifact_info(path) for path in files}
    rows = []
    for path, info in infos.items():
        if info["cell"].get("protocol", "native") != "native":
            continue
        subject: Subject | None = None
        for spec, analysis in analyses:
            key = str(info.get("key", ""))
            if key and not force and store.analysis_done(key, spec, analysis.version):
                continue
            if subject is None:
                subject = loader.load(path, info)
            row = run_analysis(analysis, spec, subject, context, out_dir)
            store.put_analysis(row)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def analyze_command(paths: list[str], analyses: str, store_path: str | None, size: str | None, protocol: str | None,
                    device: str, cache_dir: str, force: bool) -> int:
    """``ddbench analyze``: build every analysis (bad names or options: exit 2 before any runs), run
    them on the artifacts with a progress bar, print one line per row; exit 1 if any row failed."""
    from tqdm import tqdm

    from ddbench.ops.device import resolve_device
    from ddbench.plugins import get_plugin_manager
    from ddbench.results.store import ResultStore

    manager = get_plugin_manager()
    built = build_analyses(manager, parse_analyses(analyses), size, protocol)
    with ResultStore(store_path, manager) as store:
        folders = [Path(p) for p in paths] or [artifacts_dir(store.path)]
        if not paths and not folders[0].is_dir():
            raise SuiteError(f"no artifacts given and {str(folders[0])!r} does not exist: pass artifact files or folders "
                             "(`ddbench run --save-artifacts DIR`), or run a suite with `analyses = [...]`.")
        files = artifact_files(folders)
        bar = tqdm(total=len(files) * len(built), unit="analysis", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.set_description_str(f"{what} {done}/{total}")

        def on_row(row: AnalysisRow) -> None:
            bar.update(1)
            shown = ", ".join(f"{k}={v:.3g}" for k, v in list(row.metrics.items())[:4])
            tqdm.write(f"{row.label} / {row.spec}: {row.status} ({row.seconds:.1f} s) {shown or row.error}", file=sys.stderr)

        context = AnalysisContext(resolve_device(device), cache_dir, progress)
        rows = analyze(manager, files, built, store, context, store.path.parent / f"{store.path.stem}-analyses", force, on_row)
        bar.close()
    failed = sum(r.status == "failed" for r in rows)
    print(f"{len(rows)} analyses run on {len(files)} artifacts ({context.hits} cache hits); {failed} failed. Rows in {store.path}.",
          file=sys.stderr)
    return 1 if failed else 0
