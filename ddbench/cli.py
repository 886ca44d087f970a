"""The ``ddbench`` command line: ``run``, ``reproduce``, ``leaderboard``, ``compare``, ``ls``,
``plugins``, ``new-plugin``, ``import``, ``bundle`` and ``verify``, and the subcommands plugins add
(``ddbench_register_commands``).

Bad input is one line on stderr naming the thing and the fix, exit status 2, and nothing written.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from ddbench import __version__
from ddbench.contracts.executor import Executor
from ddbench.errors import PYTHON_SHOWWARNING, DDBenchError, PluginError, SuiteError, close_names, show_warning
from ddbench.plugins import PluginManager, get_plugin_manager, instantiate, options_of, parse_named, plural
from ddbench.results.leaderboard import BOARDS
from ddbench.results.records import CellResult
from ddbench.results.report import summary
from ddbench.results.store import DEFAULT_PATH, ResultStore, default_store_path, read_all, read_results
from ddbench.run import reproduce, worker
from ddbench.run.local import LocalExecutor
from ddbench.run.suite import (
    DistillerEntry,
    Suite,
    TaskEntry,
    check_budgets,
    check_distill_seeds,
    check_eval_seeds,
    check_protocols,
    check_threads,
    check_time_limit,
    default_suite,
    expand_suite,
    load_suite,
    prepare_tasks,
)
from ddbench.vocab import Budget

EXECUTOR_FLAGS = {"--ray-address": "address", "--gpus-per-cell": "gpus_per_cell", "--cpus-per-cell": "cpus_per_cell"}
"""The ``run`` flags that set executor options (the ray executor's), by option name."""
CORE_COMMANDS = ("run", "reproduce", "leaderboard", "compare", "analyze", "ls", "plugins", "new-plugin", "import", "bundle", "verify")


def build_parser(manager: PluginManager | None = None) -> argparse.ArgumentParser:
    """The parser of every command: the built-in ones, then those the plugins of ``manager``
    (default: :func:`~ddbench.plugins.get_plugin_manager`) register."""
    parser = argparse.ArgumentParser(prog="ddbench", description="Benchmark dataset distillation methods by accuracy per stored parameter.")
    parser.add_argument("--version", action="version", version=f"ddbench {__version__}")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a suite (no arguments: the quick default suite)")
    run.set_defaults(handler=cmd_run)
    run.add_argument("--suite", help="suite TOML file (default: the built-in quick suite)")
    run.add_argument("--task", action="append", default=[], metavar="NAME[:k=v,...]", help="task(s) to run, with options")
    run.add_argument("--distiller", action="append", default=[], metavar="NAME[:k=v,...]", help="distiller(s) to run, with options")
    run.add_argument("--budget", action="append", default=[], metavar="ipc=N|params=N", help="budget(s) for the given tasks")
    run.add_argument("--learner", metavar="NAME[:k=v,...]", help="learner (default: each task's default)")
    run.add_argument("--seeds", type=int, metavar="K", help="evaluation seeds: K learners per artifact (seeds 0..K-1)")
    run.add_argument("--distill-seeds", metavar="S,S,...", help="distillation seeds, comma-separated (default 0)")
    run.add_argument("--profile", choices=["quick", "full"], help="quick: CPU sizes; full: the spec's sizes")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    run.add_argument("--time-limit", type=float, metavar="S", help="seconds a distiller may run per cell")
    run.add_argument("--threads", type=int, metavar="N",
                     help="torch CPU threads every cell computes with, under every executor (default: the suite's, "
                          "else 1; on a CPU the local executor runs one distillation per core at once); recorded with each result")
    run.add_argument("--checkpoint-every", type=float, metavar="S", default=worker.CHECKPOINT_EVERY_S,
                     help=f"seconds between checkpoints of a distillation that checkpoints, from which a killed cell "
                          f"resumes on the next run (default {worker.CHECKPOINT_EVERY_S:g}; 0: none)")
    run.add_argument("--protocol", action="append", default=[], metavar="NAME",
                     help="evaluation protocol(s): native (each method's recipe) or common (the task's one recipe); repeatable")
    run.add_argument("--data-root", help="folder holding the datasets' files (or $DDBENCH_DATA_ROOT; default ~/.ddbench/data)")
    run.add_argument("--download", action="store_true", help="download missing datasets' official archives (checked, resumed)")
    run.add_argument("--store", help=f"results store (default {DEFAULT_PATH} or $DDBENCH_STORE)")
    run.add_argument("--force", action="store_true", help="recompute cells already finished in the store")
    run.add_argument("--save-artifacts", metavar="DIR", help="save every artifact as .safetensors + .json under DIR")
    run.add_argument("--executor", metavar="NAME[:k=v,...]", help="what runs the cells: local (default) or ray (docs/executors.md)")
    run.add_argument("--ray-address", metavar="auto|HOST:PORT",
                     help="ray: the Ray cluster to join (default: as ray.init() finds one, else a new one here)")
    run.add_argument("--gpus-per-cell", type=float, metavar="G", help="ray: GPUs each cell holds (a fraction shares a GPU, e.g. 0.25)")
    run.add_argument("--cpus-per-cell", type=float, metavar="N",
                     help="ray: CPUs each cell holds (default: --threads); its threads stay the run's")

    repro = sub.add_parser("reproduce", help="run a method's published configuration and write its reproduction page")
    reproduce.add_arguments(repro)
    repro.set_defaults(handler=cmd_reproduce)

    board = sub.add_parser("leaderboard", help="write leaderboards (Markdown, CSV, plot) and plugin reports from stored results")
    board.set_defaults(handler=cmd_leaderboard)
    board.add_argument("--store", action="append", default=[], help=f"results store to read, repeatable (default {DEFAULT_PATH})")
    board.add_argument("--results", action="append", default=[], help="an exported results.json (or store) to read, repeatable")
    board.add_argument("--suite", help="only the cells of this suite file")
    board.add_argument("--task", action="append", default=[], help="only these tasks")
    board.add_argument("--out", help="output folder (default leaderboards/, none with --site alone)")
    board.add_argument("--site", metavar="DIR", help="write the static leaderboard site (HTML, offline) into DIR")
    board.add_argument("--report", action="append", default=[], metavar="NAME",
                       help=f"write only these: {BOARDS} (the generic boards) or a plugin report (default: all)")
    board.add_argument("--lrs-weight", type=float, default=0.5, metavar="W",
                       help="w of DD-Ranking's label-robust score column lrs, between 0 and 1 (default 0.5, DD-Ranking's)")

    cmp = sub.add_parser("compare", help="exit 1 when NEW regresses against OLD")
    cmp.set_defaults(handler=cmd_compare)
    cmp.add_argument("old", help="results store (.sqlite), results.json or leaderboard .csv")
    cmp.add_argument("new", help="results store (.sqlite), results.json or leaderboard .csv")
    cmp.add_argument("--fail-on", action="append", default=[], metavar="METRIC:DELTA",
                     help="e.g. accuracy:-1.0 (absolute) or distill_s:+20%% (relative)")
    cmp.add_argument("--significance", metavar="ALPHA",
                     help="fail only on significant regressions: Welch's t-test over evaluation nets at level ALPHA, e.g. 0.05")

    ls = sub.add_parser("ls", help="list registered tasks, learners, distillers, analyses or executors")
    ls.set_defaults(handler=cmd_ls)
    ls.add_argument("kind", choices=["tasks", "learners", "distillers", "analyses", "executors", "deviations"],
                    help="deviations: each distiller's departures from its official code, as docs/methods.md shows them")

    an = sub.add_parser("analyze", help="run analyses of distilled data on saved artifacts into a store (docs/analyses.md)")
    an.set_defaults(handler=cmd_analyze)
    an.add_argument("artifacts", nargs="*", help="artifact files or folders (default: the store's <store>-artifacts folder)")
    an.add_argument("--analysis", required=True, help="comma-separated analyses, e.g. mixing,recognition (see `ddbench ls analyses`)")
    an.add_argument("--store", default=None, help=f"results store the rows go into (default {DEFAULT_PATH})")
    an.add_argument("--size", choices=["ci", "paper"], help="ci: CPU minutes (default); paper: the paper's sizes")
    an.add_argument("--protocol", choices=["paper", "native"], help="paper: full batch, 300 steps (default); native: the artifact's recipe")
    an.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    an.add_argument("--cache-dir", default=".ddbench/cache", help="shared state (reference models, probe runs) is cached here")
    an.add_argument("--force", action="store_true", help="rerun analyses already in the store")
    sub.add_parser("plugins", help="list loaded plugins: version, source, what each registered").set_defaults(handler=cmd_plugins)

    scaffold = sub.add_parser("new-plugin", help="write a ready-to-install distiller plugin package")
    scaffold.set_defaults(handler=cmd_new_plugin)
    scaffold.add_argument("name", help="distiller name, e.g. my-method (package ddbench-my-method)")
    scaffold.add_argument("--dir", default=".", help="folder to create the package in (default: here)")
    add_import_parsers(sub)
    for plugin, command in (manager or get_plugin_manager()).commands():
        if command.name in CORE_COMMANDS:
            raise PluginError(f"plugin {plugin!r} registered command {command.name!r}, which is a ddbench command: rename it.")
        extra = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        if command.arguments is not None:
            command.arguments(extra)
        extra.set_defaults(handler=lambda args, _run=command.run: _run(args) or 0)
    return parser


def add_import_parsers(sub: argparse._SubParsersAction) -> None:
    """``import``, ``bundle`` and ``verify`` (docs/import.md)."""
    from ddbench.budget.imports import LABEL_KINDS, PRESETS, SPACES

    imp = sub.add_parser("import", help="write a ddbench artifact from a distilled set saved by other code (docs/import.md)")
    imp.set_defaults(handler=cmd_import)
    imp.add_argument("source", help="the file or folder the source saved (images_best.pt, res_*.pt, an image folder, parquet...)")
    imp.add_argument("--from", dest="preset", required=True, metavar="PRESET", help=f"what wrote it: {', '.join(PRESETS)}")
    imp.add_argument("--task", required=True, metavar="NAME[:k=v,...]", help="the task the set was distilled on")
    imp.add_argument("--out", required=True, metavar="FILE.safetensors", help="the artifact to write (and its .json sidecar)")
    imp.add_argument("--space", choices=SPACES, help="the value space of its images (default: the preset's)")
    imp.add_argument("--mean", metavar="M,M,M", help="the per-channel mean the source normalised with (with --std)")
    imp.add_argument("--std", metavar="S,S,S", help="the per-channel std the source normalised with (with --mean)")
    imp.add_argument("--dataset", help="whose statistics the preset fills in (default: the task's dataset)")
    imp.add_argument("--labels", choices=LABEL_KINDS, help="what its labels are (default: the preset's)")
    imp.add_argument("--temperature", type=float, help="T of --labels logits: softmax(logits / T) (default: the preset's, 1)")
    imp.add_argument("--labels-file", metavar="FILE", help="the labels file of a .pt pair (default: labels_* beside images_*)")
    imp.add_argument("--lr", type=float, help="the learned learning rate the source logged (MTT saves none)")
    imp.add_argument("--lr-file", metavar="FILE", help="the file holding the learned lr (DATM's lr_best.pt is found beside the images)")
    imp.add_argument("--class-order", metavar="I,J,...", help="the task class of each source class, in source order (default: the same)")
    imp.add_argument("--experiment", type=int, metavar="N", help="which experiment of a DatasetCondensation res_*.pt")
    imp.add_argument("--test-selected", action=argparse.BooleanOptionalAction, default=None,
                     help="whether the set was kept for its test accuracy (default: the preset's reading of the file name)")
    imp.add_argument("--mosaic", type=int, metavar="K", help="crops per image side (RDED's factor; default: the preset's)")
    imp.add_argument("--teacher", metavar="SPEC", help="the online teacher's architecture, a learner spec (stored and charged)")
    imp.add_argument("--teacher-weights", metavar="FILE", help="the teacher's state_dict (.safetensors or .pt of tensors)")
    imp.add_argument("--soft-labels", metavar="DIR", help="SRe2L's FKD soft-label folder (epoch_<e>/batch_<b>.tar), as a bank")
    imp.add_argument("--fkd-seed", type=int, default=42, help="the --fkd-seed the FKD files were written with (default 42)")
    imp.add_argument("--recipe", metavar="k=v,...", help="evaluation recipe fields the source's evaluation uses (default: the preset's)")
    imp.add_argument("--image-column", default="image", help="parquet: the column of encoded images (default image)")
    imp.add_argument("--label-column", default="label", help="parquet: the column of class ids (default label)")
    imp.add_argument("--force", action="store_true", help="import even where the pixel statistics contradict the declared space")

    bun = sub.add_parser("bundle", help="pack a saved artifact and its cell's stored result into one verifiable file")
    bun.set_defaults(handler=cmd_bundle)
    bun.add_argument("artifact", help="an artifact a run saved (--save-artifacts DIR): DIR/<task>-<distiller>-<key>.safetensors")
    bun.add_argument("--store", help=f"the results store its cell ran into (default {DEFAULT_PATH} or $DDBENCH_STORE)")
    bun.add_argument("--out", help="the bundle to write (default: beside the artifact, .ddbench.zip)")

    ver = sub.add_parser("verify", help="re-score a bundle and say whether its claimed result stands")
    ver.set_defaults(handler=cmd_verify)
    ver.add_argument("bundle", help="a file `ddbench bundle` wrote")
    ver.add_argument("--significance", default="0.05", metavar="ALPHA", help="the level of the Welch test (default 0.05)")
    ver.add_argument("--fail-on", action="append", default=[], metavar="METRIC:DELTA",
                     help="how far short of the claim counts (default accuracy:-1.0, as ddbench compare)")
    ver.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")


def _numbers(text: str | None, flag: str, kind: type = float) -> list | None:
    """A comma-separated list of numbers, or a one-line error naming the flag."""
    if text is None:
        return None
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SuiteError(f"{flag} takes comma-separated {'integers' if kind is int else 'numbers'} (got {text!r}).") from exc


def cmd_import(args: argparse.Namespace) -> int:
    from ddbench.budget.artifact import save
    from ddbench.budget.imports import PRESETS, Request, empty_view, import_set

    if args.preset not in PRESETS:
        raise SuiteError(f"unknown preset {args.preset!r}.{close_names(args.preset, PRESETS)} Presets: {', '.join(PRESETS)}.")
    manager = get_plugin_manager()
    name, options = parse_named(args.task)
    task = instantiate(manager.tasks.get(name), options, "full")
    view = empty_view(name, task.num_classes, tuple(task.input_shape), task.info(), options)
    mean, std = _numbers(args.mean, "--mean"), _numbers(args.std, "--std")
    recipe = parse_named(f"recipe:{args.recipe}")[1] if args.recipe else {}
    path = lambda text: None if text is None else Path(text)  # noqa: E731 - a one-line helper
    request = Request(Path(args.source), PRESETS[args.preset], view, args.task, args.dataset or task.reference_dataset or name,
                      space=args.space, mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
                      labels=args.labels, temperature=args.temperature, labels_file=path(args.labels_file), lr=args.lr,
                      lr_file=path(args.lr_file), class_order=_numbers(args.class_order, "--class-order", int),
                      experiment=args.experiment, test_selected=args.test_selected, mosaic=args.mosaic, teacher=args.teacher,
                      teacher_weights=path(args.teacher_weights), soft_labels=path(args.soft_labels), fkd_seed=args.fkd_seed,
                      recipe=recipe, image_column=args.image_column, label_column=args.label_column, force=args.force)
    artifact, manifest = import_set(request, manager.learners)
    written = save(artifact, Path(args.out), {"import": manifest})
    space = manifest["space"]["declared"] + (" converted to the task's space" if manifest["converted"] else "")
    print(f"imported {len(artifact.x)} images for {name} ({space}; labels {manifest['labels']['kind']}; test_selected "
          f"{str(manifest['test_selected']).lower()}); score it: ddbench run --task {args.task} --distiller file:path={written}"
          f"{',test_selected=true' if manifest['test_selected'] else ''} --budget ipc=N", file=sys.stderr)
    print(written)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from ddbench.run.bundle import bundle

    artifact = Path(args.artifact)
    records = read_results(args.store).require_records() if args.store else read_results().require_records()
    out = Path(args.out) if args.out else artifact.with_suffix(".ddbench.zip")
    print(bundle(artifact, records, out))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ddbench.results.compare import check_significance
    from ddbench.run.bundle import verify

    text, stands = verify(Path(args.bundle), get_plugin_manager(), args.device, check_significance(args.significance), args.fail_on)
    print(text)
    return 0 if stands else 1


def suite_from_args(args: argparse.Namespace):  # -> Suite
    suite = load_suite(args.suite) if args.suite else default_suite()
    if args.task:
        if not args.budget:
            raise SuiteError("--task needs --budget: add e.g. --budget ipc=10 (classification) or --budget params=5000.")
        suite.tasks = [TaskEntry(name, [Budget.parse(b) for b in args.budget], opts) for name, opts in map(parse_named, args.task)]
        if not args.suite:  # an ad hoc run: the native protocol unless --protocol names others
            suite.protocols = ["native"]
    elif args.budget:
        budgets = [Budget.parse(b) for b in args.budget]
        for t in suite.tasks:
            t.budgets = budgets
    if args.distiller:
        suite.distillers = [DistillerEntry(*parse_named(d)) for d in args.distiller]
    if args.learner:
        name, opts = parse_named(args.learner)
        for t in suite.tasks:
            t.learner, t.learner_options = name, opts
    if args.seeds is not None:
        suite.eval_seeds = check_eval_seeds(args.seeds, "--seeds")
    if args.distill_seeds is not None:
        try:
            seeds = [int(s) for s in args.distill_seeds.split(",") if s.strip()]
        except ValueError as exc:
            raise SuiteError(f"--distill-seeds takes comma-separated integers (got {args.distill_seeds!r}).") from exc
        suite.distill_seeds = check_distill_seeds(seeds, "--distill-seeds")
    if args.profile:
        suite.profile = args.profile
    if args.time_limit is not None:
        suite.time_limit_s = check_time_limit(args.time_limit, "--time-limit")
    if args.protocol:
        suite.protocols = check_protocols(args.protocol, "--protocol")
    if args.threads is not None:
        suite.threads = check_threads(args.threads, "--threads")
    return suite


def folder(path: str, flag: str) -> Path:
    """``path`` as a folder to write into: a path that is a file is a one-line error."""
    if Path(path).exists() and not Path(path).is_dir():
        raise SuiteError(f"{flag} {path!r} is a file: pass a folder (it is created if missing).")
    return Path(path)


def cmd_run(args: argparse.Namespace) -> int:
    data_options(args)
    suite = suite_from_args(args)
    artifacts = folder(args.save_artifacts, "--save-artifacts") if args.save_artifacts else None
    if suite.analyses:
        from ddbench.analysis.runner import artifacts_dir, build_analyses, parse_analyses

        build_analyses(get_plugin_manager(), parse_analyses(suite.analyses))  # bad names or options: exit 2 before any cell
        artifacts = artifacts or artifacts_dir(Path(args.store) if args.store else default_store_path())
    every = args.checkpoint_every
    if not (math.isfinite(every) and every >= 0):
        raise SuiteError(f"--checkpoint-every must be a number of seconds >= 0, 0 for no checkpoints (got {every:g}).")
    records = execute(suite, args.store, args.device, args.force, artifacts, executor_from_args(args), every or None)
    if records is None:
        return 130
    print(summary(records, args.store or default_store_path()))
    failed = min(sum(r["status"] == "failed" for r in records), 100)
    if suite.analyses:
        from ddbench.analysis.runner import analyze_command

        assert artifacts is not None  # set above whenever the suite names analyses
        files = [str(artifacts / f"{r['config']['task']}-{r['config']['distiller']}-{r['key']}.safetensors")
                 for r in records if r["status"] == "ok"]
        files = [f for f in files if Path(f).is_file()]
        if files:
            failed += analyze_command(files, ",".join(suite.analyses), args.store, None, None, args.device, ".ddbench/cache", args.force)
    return failed


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor ``--executor`` names (default local), its options set by the flags of :data:`EXECUTOR_FLAGS`."""
    name, options = parse_named(args.executor) if args.executor else ("local", {})
    cls = get_plugin_manager().executors.get(name)
    for flag, option in EXECUTOR_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if option not in options_of(cls):
            raise SuiteError(f"{flag} is an option of the ray executor, not of the {name!r} executor: add --executor ray.")
        options[option] = value
    return instantiate(cls, options)


def execute(suite: Suite, store_path: str | None, device: str, force: bool = False, artifacts: Path | None = None,
            executor: Executor | None = None, checkpoint_every_s: float | None = worker.CHECKPOINT_EVERY_S) -> list[dict] | None:
    """Run ``suite`` into the store at ``store_path`` (cells already there are reused unless
    ``force``) with ``executor`` (default local), showing progress; the records of the suite's
    cells in suite order, or ``None`` when interrupted (every finished cell is kept). Every cell
    computes with the suite's thread count, else one; distillations
    checkpoint every ``checkpoint_every_s`` seconds (None: never)."""
    from tqdm import tqdm

    from ddbench.run.harness import Harness

    worker.warm_allocator()
    manager = get_plugin_manager()
    bar = tqdm(total=0, unit="cell", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def on_progress(label: str, step: int, total: int | None, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        bar.set_description_str(f"{label} step {step}{f'/{total}' if total else ''} {shown}", refresh=False)
        bar.refresh()

    def on_status(text: str) -> None:
        bar.set_description_str(text, refresh=False)
        bar.refresh()

    executor = executor or LocalExecutor()
    harness = Harness(manager, device, on_progress=on_progress, artifact_dir=artifacts, on_status=on_status,
                      threads=suite.threads or 1, checkpoint_every_s=checkpoint_every_s)
    cells = list(harness.cells(suite))
    executor.check(harness)
    check_budgets(cells, lambda task, options, profile: harness.task(task, options, profile)[1])
    store = ResultStore(store_path, manager)
    done = {c.key() for c in cells if not force and store.done(c)}
    try:  # a missing or damaged dataset: one line and exit 2 before any cell runs
        prepare_tasks(manager, (c for c in cells if c.key() not in done))
    except BaseException:
        store.close()
        bar.close()
        raise
    bar.total = len(cells) - len(done)
    print(f"ddbench {__version__}: suite {suite.name!r}, {len(cells)} cells ({len(done)} already in {store.path}), "
          f"profile {suite.profile}, device {harness.device}, {harness.threads} threads, {suite.eval_seeds} eval seeds"
          f"{'' if executor.name == 'local' else f', executor {executor.name}'}", file=sys.stderr)

    def on_result(result: CellResult) -> None:
        store.put(result, suite.name, executor.provenance(result))
        bar.update(1)
        if result.status == "skipped":  # the summary lists the skipped cells by reason
            return
        what = f"{result.metric} {result.mean:.4f} ± {result.std:.4f}" if result.status == "ok" else f"{result.status}: {result.error}"
        tqdm.write(f"{result.cell.label}: {what} ({result.distill_s + result.eval_s:.1f} s)", file=sys.stderr)

    start = time.perf_counter()
    try:
        new = harness.run(suite, on_result=on_result, skip=lambda c: c.key() in done, executor=executor)
    except KeyboardInterrupt:
        bar.close()
        store.close()
        print(f"ddbench: interrupted; every finished cell is kept in {store.path}, and a rerun skips them.", file=sys.stderr)
        return None
    order = {c.key(): i for i, c in enumerate(cells)}
    records = sorted(store.records(order), key=lambda r: order[r["key"]])
    store.close()
    bar.close()
    failed = sum(r["status"] == "failed" for r in records)
    print(f"\n{len(new)} cells run in {time.perf_counter() - start:.1f} s on {harness.device} ({len(done)} reused); "
          f"{failed} failed.", file=sys.stderr)
    return records


def cmd_reproduce(args: argparse.Namespace) -> int:
    data_options(args)
    return reproduce.run(args, get_plugin_manager(), execute)


DATA_VARIABLES = ("DDBENCH_DATA_ROOT", "DDBENCH_DOWNLOAD")


def data_options(args: argparse.Namespace) -> None:
    """``--data-root`` and ``--download``, as the tasks read from files (and the cell hosts inherit)
    them: environment variables, which :func:`main` restores when the command ends."""
    if args.data_root:
        os.environ["DDBENCH_DATA_ROOT"] = args.data_root
    if args.download:
        os.environ["DDBENCH_DOWNLOAD"] = "1"


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ddbench.results import leaderboard
    from ddbench.results.site import write_site

    out = None if args.site and args.out is None else folder(args.out or "leaderboards", "--out")
    site = folder(args.site, "--site") if args.site else None
    manager = get_plugin_manager()
    reports = {report.name: report for _, report in manager.reports()}
    for name in args.report:
        if name != BOARDS and name not in reports:
            choices = [BOARDS, *reports]
            raise SuiteError(f"unknown report {name!r} in --report.{close_names(name, choices)} Available: {', '.join(choices)}.")
    chosen = set(args.report) or {BOARDS, *reports}
    records = read_all(args.store, args.results).require_records()
    if args.suite:  # the suite's cells, on any device and by any ddbench version
        anywhere = {"device_type": None, "results_version": None}
        configs = [{**c.config(), **anywhere} for c in expand_suite(manager, load_suite(args.suite))]
        records = [r for r in records if {**r["config"], **anywhere} in configs]
    if args.task:
        records = [r for r in records if r["config"]["task"] in args.task]
    if not records:
        raise SuiteError("no stored results to build a leaderboard from: run `ddbench run` first (or pass --store/--results).")
    stores = args.store or ([] if args.results else [None])
    if not 0 <= args.lrs_weight <= 1:
        raise SuiteError(f"--lrs-weight {args.lrs_weight:g} is not a weight: pass a number between 0 and 1 (DD-Ranking's is 0.5).")
    written = leaderboard.write(records, out, lrs_weight=args.lrs_weight) if out and BOARDS in chosen else []
    for name, report in reports.items():
        if out and name in chosen:
            written += report.write(records, out)
    if out and BOARDS in chosen:
        written += analysis_pages(stores, {r["key"] for r in records}, out)
    if site:
        written += write_site(records, site, analysis_pages(stores, {r["key"] for r in records}, site), saved_artifacts(stores),
                              args.lrs_weight)
    for path in written:
        print(path)
    return 0


def saved_artifacts(stores: list[str | None]) -> list[Path]:
    """The artifact folders of the given stores that exist (``<store>-artifacts``, where ``ddbench run`` saves them for analyses)."""
    from ddbench.analysis.runner import artifacts_dir

    folders = [artifacts_dir(Path(path) if path else default_store_path()) for path in stores]
    return [f for f in folders if f.is_dir()]


def analysis_pages(stores: list[str | None], keys: set[str], out: Path) -> list[Path]:
    """The analysis pages of the analysis rows, in the given stores, of the cells being published."""
    from ddbench.analysis.pages import write_pages
    from ddbench.results.store import kind_of

    rows = []
    for path in stores:
        if kind_of(Path(path) if path else default_store_path()) == "store":
            with ResultStore(path, create=False) as store:
                rows += [r for r in store.analysis_rows() if r.key in keys]
    return write_pages(rows, out) if rows else []


def cmd_compare(args: argparse.Namespace) -> int:
    from ddbench.results.compare import Rule, check_significance, compare, default_rules
    from ddbench.results.records import directions

    alpha = None if args.significance is None else check_significance(args.significance)
    old, new = read_results(args.old).rows(), read_results(args.new).rows()
    known = directions(old + new)
    rules = [Rule.parse(r, known) for r in args.fail_on] or default_rules(known)
    text, regressions = compare(old, new, rules, alpha)
    print(text)
    tested = "" if alpha is None else f" (significant at level {alpha:g}: Welch's t-test over evaluation nets)"
    print(f"\n{regressions} regression(s) against {', '.join(f'{r.metric}:{r}' for r in rules) or 'missing cells only'}{tested}.",
          file=sys.stderr)
    return 1 if regressions else 0


def cmd_ls(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    manager = get_plugin_manager()
    if args.kind == "deviations":
        from ddbench.contracts.deviations import doc_block

        for name in manager.names("distiller"):
            cls = manager.distillers.get(name)
            print(doc_block(name, cls.official_code or "not declared", cls.deviations) + "\n")
        return 0
    kind = "analysis" if args.kind == "analyses" else args.kind[:-1]
    rows = []
    for name in manager.names(kind):
        cls = manager.registries[kind].get(name)
        opts = ", ".join(f"{k}={v!r}" for k, v in options_of(cls).items())
        rows.append([name, manager.owner(kind, name), cls.description, opts])
    print(tabulate(rows, headers=[kind, "plugin", "description", "options (defaults)"], tablefmt="github"))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ddbench.analysis.runner import analyze_command

    return analyze_command(args.artifacts, args.analysis, args.store, args.size, args.protocol, args.device,
                           args.cache_dir, args.force)


def cmd_plugins(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    manager = get_plugin_manager()
    rows = []
    extras: dict[str, dict[str, list[str]]] = {}
    for kind, found in (("command", manager.commands()), ("report", manager.reports())):
        for plugin, item in found:
            extras.setdefault(plugin, {}).setdefault(kind, []).append(item.name)
    for info in manager.plugins.values():
        registered = {**info.registered, **extras.get(info.name, {})}
        what = "; ".join(f"{plural(k)}: {', '.join(v)}" for k, v in registered.items() if v)
        rows.append([info.name, info.version, info.source, what or "(nothing)"])
    print(tabulate(rows, headers=["plugin", "version", "source", "registered"], tablefmt="github"))
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from ddbench.testing.scaffold import write_plugin

    root = write_plugin(args.name, folder(args.dir, "--dir"), taken=get_plugin_manager().names("distiller"))
    print(root)
    print(f"next: pip install -e {root} && pytest {root}  (then: ddbench plugins)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = show_warning
    environment = {name: os.environ.get(name) for name in DATA_VARIABLES}
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args.handler(args)
    except DDBenchError as exc:
        print(f"ddbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddbench: interrupted.", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = PYTHON_SHOWWARNING
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    sys.exit(main())
