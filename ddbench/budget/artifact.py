"""Storage accounting and validation of artifacts, done by the harness, never by a plugin."""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ddbench.budget import generator, labels, stages
from ddbench.contracts.interfaces import Artifact, Learner, TaskView
from ddbench.contracts.recipe import declared_recipe
from ddbench.errors import ArtifactError, BudgetError, DDBenchError
from ddbench.vocab import DISTILLATION_REGIMES, Budget

if TYPE_CHECKING:
    from ddbench.plugins import Registry


class Problem(NamedTuple):
    """One reason an artifact is refused: the conformance rule it breaks and a one-line message.

    ``rule`` is a key of :data:`ddbench.testing.RULES`: ``returns-artifact``, ``valid``, ``finite``
    or ``within-budget``. :func:`validate` and :func:`admit` raise the first problem
    (:meth:`error`); the conformance kit reports every one under its rule.
    """

    rule: str
    message: str

    def error(self) -> DDBenchError:
        """The exception the harness raises for this problem: a BudgetError over budget, else an ArtifactError."""
        return (BudgetError if self.rule == "within-budget" else ArtifactError)(self.message)


@dataclass(frozen=True)
class Storage:
    """What an artifact stores: scalars and bytes in total, by dtype, and per tensor."""

    scalars: int
    bytes: int
    by_dtype: dict[str, int]
    by_tensor: dict[str, int]


def count_storage(artifact: Artifact) -> Storage:
    """Count every element of every tensor in the artifact (learned lr, decoders... included)."""
    by_dtype: dict[str, int] = {}
    by_tensor: dict[str, int] = {}
    total_bytes = 0
    for name, tensor in artifact.tensors.items():
        n = tensor.numel()
        by_tensor[name] = n
        key = str(tensor.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + n * tensor.element_size()
        total_bytes += n * tensor.element_size()
    return Storage(sum(by_tensor.values()), total_bytes, by_dtype, by_tensor)


DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The real dtypes an artifact tensor may have (no complex, quantized or float8 packing)."""
TENSOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_boundary(artifact: Any, distiller: str) -> None:
    """What may leave a distiller's worker: an :class:`Artifact` of plain dense tensors of real dtypes.

    Tensor subclasses (whose ``numel`` or ``__torch_function__`` may lie), sparse, quantized and
    complex tensors, and non-tensor values are refused with a one-line error naming the tensor.
    Views are fine: only their own elements are serialized (:func:`to_bytes`) and counted.
    """
    problem = boundary_problem(artifact, distiller)
    if problem is not None:
        raise problem.error()


def boundary_problem(artifact: Any, distiller: str) -> Problem | None:
    """The first reason :func:`check_boundary` refuses ``artifact``, or ``None``."""
    if not isinstance(artifact, Artifact):
        return Problem("returns-artifact", f"distiller {distiller!r} returned {type(artifact).__name__}, not an Artifact: "
                                           "return ddbench.Artifact(tensors={...}).")
    if not isinstance(artifact.tensors, dict) or not artifact.tensors:
        return Problem("valid", f"distiller {distiller!r} returned an artifact with no tensors: store at least 'x' and 'y'.")
    for name, tensor in artifact.tensors.items():
        where = f"artifact tensor {name!r} from {distiller!r}"
        if not isinstance(name, str) or not TENSOR_NAME.match(name):
            return Problem("valid", f"artifact tensor name {name!r} from {distiller!r} is not a plain name: "
                                    "use letters, digits, '_', '.', '-'.")
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            what = "a torch.Tensor subclass" if isinstance(tensor, torch.Tensor) else "not a torch.Tensor"
            return Problem("valid", f"{where} is a {type(tensor).__name__} ({what}): return a plain tensor.")
        if tensor.layout != torch.strided:
            return Problem("valid", f"{where} is a {tensor.layout} tensor: store it dense (tensor.to_dense()).")
        if tensor.is_quantized or tensor.dtype not in DTYPES:
            return Problem("valid", f"{where} has dtype {tensor.dtype}: store a real dtype "
                                    f"({', '.join(str(d).removeprefix('torch.') for d in DTYPES)}).")
        if tensor.device.type == "meta":
            return Problem("valid", f"{where} is on the meta device and holds no values: store real values.")
    return None


def to_bytes(tensors: dict[str, Tensor]) -> bytes:
    """The tensors in the safetensors format: each tensor's own elements, copied (never its storage)."""
    from safetensors.torch import save

    return save({k: t.detach().to("cpu", copy=True).contiguous() for k, t in tensors.items()})


def from_bytes(data: bytes, distiller: str) -> dict[str, Tensor]:
    """Plain tensors parsed from safetensors bytes; the harness counts these and nothing else."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError, OSError) as exc:
        raise ArtifactError(f"the artifact of {distiller!r} did not arrive as valid safetensors bytes ({exc}).") from exc
    for name, tensor in tensors.items():
        if not TENSOR_NAME.match(name) or tensor.dtype not in DTYPES:
            raise ArtifactError(f"artifact tensor {name!r} from {distiller!r} ({tensor.dtype}) "
                                "is not a plain named tensor of a real dtype.")
    return {k: t.clone() for k, t in tensors.items()}


def validate(artifact: Artifact, task: TaskView, budget: Budget | None, distiller: str,
             input_tensors: tuple[str, ...] = ("x",), learners: Registry[Any] | None = None) -> Storage:
    """Check types, shapes, labels, finiteness and the budget; return the storage count.

    ``budget`` is ``None`` for budget-exempt reference rows (the full train split);
    ``input_tensors`` are the tensors the learner trains from (one must be present); ``learners``
    is the registry a declared teacher's architecture is looked up in (default: the installed
    plugins'). Raises the first of :func:`problems`.
    """
    found = problems(artifact, task, budget, distiller, input_tensors, learners)
    if found:
        raise found[0].error()
    return count_storage(artifact)


def problems(artifact: Artifact, task: TaskView, budget: Budget | None, distiller: str,
             input_tensors: tuple[str, ...] = ("x",), learners: Registry[Any] | None = None) -> list[Problem]:
    """Every reason :func:`validate` refuses ``artifact``, in the order it checks them (empty when
    it is valid): the boundary (:func:`check_boundary`; past a problem there nothing else is
    checked), an input tensor, finite values, inputs and labels with their label regime
    (:mod:`ddbench.budget.labels`), and the budget (of the data, the regime's label tensors on top)."""
    problem = boundary_problem(artifact, distiller)
    if problem is not None:
        return [problem]
    tensors = artifact.tensors
    found: list[Problem] = []
    if not any(name in tensors for name in input_tensors):
        found.append(Problem("valid", f"artifact from {distiller!r} has no {' or '.join(map(repr, input_tensors))} tensor "
                                      f"(it has {', '.join(sorted(tensors))}): store the inputs the learner trains from as tensors['x']."))
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            found.append(Problem("finite", f"artifact tensor {name!r} from {distiller!r} has NaN or infinite values: "
                                           "check the method's learning rate or loss."))
    if "x" in tensors:
        problem = _inputs_and_labels_problem(artifact, task, distiller) or _regime_problem(artifact, task, distiller, learners)
        if problem is not None:
            found.append(problem)
    message = stages.stage_problem(tensors, artifact.recipe, task.num_classes)
    if message is not None:
        found.append(Problem("valid", f"the staged artifact of {distiller!r} {message}"))
    message = generator.generator_problem(tensors, task.num_classes)
    if message is not None:
        found.append(Problem("valid", f"the artifact of {distiller!r} stores a generator, but {message}"))
    if budget is not None:
        storage, limit = count_storage(artifact), budget.scalars(task)
        data = labels.data_scalars(tensors, artifact.recipe) if "x" in tensors else storage.scalars
        if data > limit:
            parts = ", ".join(f"{k}={v}" for k, v in storage.by_tensor.items())
            charged = "" if data == storage.scalars else " of data (its label tensors charged on top, docs/labels.md)"
            found.append(Problem("within-budget", f"artifact from {distiller!r} stores {data} scalars{charged}, over the budget "
                                                  f"{budget} = {limit} scalars ({parts}): store less."))
    return found


def _regime_problem(artifact: Artifact, task: TaskView, distiller: str, learners: Registry[Any] | None) -> Problem | None:
    """The teacher or soft-label bank of an artifact, checked (:mod:`ddbench.budget.labels`)."""
    kind = labels.regime(artifact.tensors, artifact.recipe)
    message = None
    if kind == "teacher":
        message = labels.teacher_problem(artifact.tensors, artifact.recipe, task, learners)
    elif kind == "soft-bank":
        message = labels.bank_problem(artifact.tensors, task.num_classes)
    return None if message is None else Problem("valid", f"the artifact of {distiller!r} is in the {kind} label regime, but {message}")


def admit(artifact: Artifact, task: TaskView, budget: Budget | None, distiller: str,
          learner: type[Learner], learners: Registry[Any] | None = None) -> tuple[Artifact, Storage]:
    """The artifact ``learner`` may train from: the declared recipe checked
    (:func:`~ddbench.contracts.recipe.declared_recipe`), the tensors validated and counted (:func:`validate`),
    and the meta left behind. Used by the harness and by the conformance kit alike (through
    :func:`admission_problems`); raises the first of :func:`admission_problems`."""
    found = admission_problems(artifact, task, budget, distiller, learner, learners)
    if found:
        raise found[0].error()
    admitted = Artifact(artifact.tensors, declared_recipe(artifact.recipe, artifact.tensors, learner.recipe_options,
                                                          f"the artifact of {distiller!r}"))
    return admitted, count_storage(admitted)


def admission_problems(artifact: Artifact, task: TaskView, budget: Budget | None, distiller: str,
                       learner: type[Learner], learners: Registry[Any] | None = None) -> list[Problem]:
    """Every reason :func:`admit` refuses ``artifact`` (empty when it is admitted): the declared
    recipe (rule ``valid``), a label regime the learner cannot train in, then :func:`problems` of
    the tensors."""
    try:
        recipe = declared_recipe(artifact.recipe, artifact.tensors, learner.recipe_options, f"the artifact of {distiller!r}")
    except ArtifactError as exc:
        return [Problem("valid", str(exc)), *problems(artifact, task, budget, distiller, learner.input_tensors, learners)]
    found = []
    if isinstance(artifact.tensors, dict):
        kind = labels.regime(artifact.tensors, recipe)
        if kind not in learner.label_regimes:
            found.append(Problem("valid", f"the artifact of {distiller!r} is in the {kind} label regime, which learner "
                                          f"{learner.name!r} cannot train in (it trains in {', '.join(learner.label_regimes)}): "
                                          "use a classifier learner such as convnet."))
        if stages.is_staged(artifact.tensors) and not learner.trains_stages:
            found.append(Problem("valid", f"the artifact of {distiller!r} is staged, which learner {learner.name!r} cannot "
                                          "train stage by stage: use a classifier learner such as convnet."))
    return found + problems(Artifact(artifact.tensors, recipe), task, budget, distiller, learner.input_tensors, learners)


def _inputs_and_labels_problem(artifact: Artifact, task: TaskView, distiller: str) -> Problem | None:
    """``x`` float32 of shape (N >= 1, *input_shape); ``y`` one target per row: int64 classes in
    range, (N, C) soft labels or float regression targets (checked here, before any reaches CUDA)."""
    x = artifact.tensors["x"]
    if tuple(x.shape[1:]) != tuple(task.input_shape) or x.dim() == 0:
        return Problem("valid", f"artifact 'x' from {distiller!r} has shape {tuple(x.shape)}, "
                                f"expected (N, {', '.join(map(str, task.input_shape))}) for task {task.name!r}.")
    if len(x) == 0:
        return Problem("valid", f"artifact 'x' from {distiller!r} has no rows: store at least one example.")
    if x.dtype != torch.float32:
        return Problem("valid", f"artifact 'x' from {distiller!r} is {str(x.dtype).removeprefix('torch.')}: inputs must be float32, "
                                "the learners' dtype (x.float()).")
    y = artifact.tensors.get("y")
    if y is None and labels.regime(artifact.tensors, artifact.recipe) in DISTILLATION_REGIMES:
        return None  # the teacher or the bank gives the targets
    if y is None and artifact.recipe.get("labels") == "class-balanced":
        if task.num_classes is None or len(x) % task.num_classes:
            return Problem("valid", f"artifact from {distiller!r} declares class-balanced labels but has {len(x)} rows "
                                    f"for {task.num_classes} classes: store 'y' instead.")
        return None
    if y is None or y.dim() == 0 or len(y) != len(x):
        return Problem("valid", f"artifact from {distiller!r} needs a 'y' with one target per row of 'x' "
                                f"(got {None if y is None else tuple(y.shape)} for {len(x)}).")
    if task.num_classes is None:
        if not y.is_floating_point() or y.dim() != 1:
            return Problem("valid", f"artifact 'y' from {distiller!r} is {y.dtype} of shape {tuple(y.shape)}: "
                                    "regression targets are one float per row.")
    elif y.is_floating_point():
        if tuple(y.shape) != (len(x), task.num_classes):
            return Problem("valid", f"artifact 'y' from {distiller!r} is float of shape {tuple(y.shape)}: "
                                    f"soft labels are (N, {task.num_classes}); hard labels are int64 class indices.")
    else:
        if y.dtype != torch.int64 or y.dim() != 1:
            return Problem("valid", f"artifact 'y' from {distiller!r} is {str(y.dtype).removeprefix('torch.')} of shape "
                                    f"{tuple(y.shape)}: store hard labels as int64 class indices (N,) (y.long()).")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= task.num_classes:
            return Problem("valid", f"artifact 'y' from {distiller!r} holds labels {low}..{high}, "
                                    f"outside the task's classes 0..{task.num_classes - 1}.")
    return None


def with_labels(artifact: Artifact, num_classes: int | None) -> Artifact:
    """The artifact with ``y`` derived when its recipe declares class-balanced labels."""
    if "y" in artifact.tensors or artifact.recipe.get("labels") != "class-balanced" or num_classes is None:
        return artifact
    x = artifact.tensors["x"]
    if stages.is_staged(artifact.tensors):  # class-balanced within each stage (ddbench.budget.stages)
        y = stages.class_balanced_labels(artifact.tensors[stages.END].tolist(), num_classes, x.device)
    else:
        y = torch.arange(num_classes, device=x.device).repeat_interleave(len(x) // num_classes)
    return Artifact({**artifact.tensors, "y": y}, artifact.recipe, artifact.meta, artifact.teacher)


def compression(task: TaskView, storage: Storage) -> float:
    """Stored scalars of the full train split divided by the artifact's."""
    full = len(task.train) * (math.prod(task.input_shape) + 1)
    return full / max(storage.scalars, 1)


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def content_hash(artifact: Artifact) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(artifact.tensors):
        t = artifact.tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(artifact: Artifact, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.safetensors) and a JSON sidecar with the recipe, meta, ``info`` (task,
    distiller, budget, config, versions) and the content hash. Never pickle."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(artifact.tensors))
    sidecar = {"recipe": artifact.recipe, "meta": artifact.meta, "info": info or {}, "sha256": content_hash(artifact)}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=str) + "\n")
    return path


SHA256 = re.compile(r"^[0-9a-f]{64}$")
SAVED_BY = "save it with ddbench.budget.artifact.save or `ddbench run --save-artifacts DIR`"


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar beside the artifact ``path`` (the same name, ``.json``), checked: a JSON object
    whose ``recipe``, ``meta`` and ``info`` are objects and whose ``sha256`` is a content hash.

    An artifact without a sidecar, or whose sidecar lost its hash, is refused rather than loaded
    unchecked: nothing would say that its tensors are the ones saved. Every problem is a one-line
    :class:`~ddbench.errors.ArtifactError` naming the file."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        raise ArtifactError(f"artifact {Path(path).name!r} has no sidecar {sidecar.name!r} (its recipe and content hash), so nothing "
                            f"in it can be checked: {SAVED_BY}.")
    try:
        data = json.loads(sidecar.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ArtifactError(f"sidecar {str(sidecar)!r} cannot be read ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"sidecar {str(sidecar)!r} is not UTF-8 text (a pickle or a binary file?): {SAVED_BY}.") from None
    except ValueError as exc:
        raise ArtifactError(f"sidecar {str(sidecar)!r} is not valid JSON ({exc}): {SAVED_BY}.") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"sidecar {str(sidecar)!r} holds a JSON {type(data).__name__}, not an object with recipe, meta, info "
                            f"and sha256: {SAVED_BY}.")
    for key in ("recipe", "meta", "info"):
        if not isinstance(data.get(key, {}), dict):
            raise ArtifactError(f"sidecar {str(sidecar)!r}: {key!r} is a {type(data[key]).__name__}, not a JSON object: {SAVED_BY}.")
    if not isinstance(data.get("sha256"), str) or not SHA256.match(data["sha256"]):
        raise ArtifactError(f"sidecar {str(sidecar)!r} has no content hash ('sha256'), so the tensors cannot be checked: {SAVED_BY}.")
    return data


def load(path: str | Path) -> Artifact:
    """Read an artifact saved by :func:`save`: pickle-based files are refused, and so are tensors
    that are not plain names of real dtypes, a missing or malformed sidecar (:func:`read_sidecar`)
    and tensors that do not match its hash; each with a one-line :class:`~ddbench.errors.ArtifactError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ArtifactError(f"refusing to load {path.name!r}: pickle files can run code when loaded; "
                            "share artifacts as .safetensors + .json.")
    if not path.is_file():
        raise ArtifactError(f"artifact file {str(path)!r} not found.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path.name!r} is not a safetensors file ({exc}): share artifacts as .safetensors + .json.") from exc
    for name, tensor in tensors.items():
        if not TENSOR_NAME.match(name) or tensor.dtype not in DTYPES:
            raise ArtifactError(f"{path.name!r} holds tensor {name!r} ({str(tensor.dtype).removeprefix('torch.')}), not a plain "
                                "name (letters, digits, '_', '.', '-') of a real dtype: refusing it.")
    sidecar = read_sidecar(path)
    artifact = Artifact(tensors, sidecar.get("recipe", {}), sidecar.get("meta", {}))
    if sidecar["sha256"] != content_hash(artifact):
        raise ArtifactError(f"{path.name!r} does not match the hash in its sidecar: the file was changed or corrupted.")
    return artifact
