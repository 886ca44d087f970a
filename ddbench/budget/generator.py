"""A small class-conditional image generator that an artifact may store instead of its images
(MGDD's regeneration form, docs/methods.md §16), and the decoding every classifier learner applies.

The generator is fully convolutional, so one set of weights maps inputs of any height and width
(8x8 digits, 28x28 MNIST) [ours]: ``G(x, c) = x + out(relu(hidden(... relu(in(x) + embed[c]))))``,
3x3 convolutions of ``width`` channels, a learned per-class shift after the first one, and the last
convolution initialised at zero, so an untrained generator is the identity.

An artifact in the regeneration form stores the generator's weights as ``gen.<name>`` tensors and
its conditioning inputs as ``x`` (class by class, equal counts); :func:`decoded` replaces ``x`` by
``G(x, c)`` before training. The harness counts the weights with every other tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn

from ddbench.contracts.interfaces import Artifact

PREFIX = "gen."


class ConditionalGenerator(nn.Module):
    """``G(x, c)`` for (N, C, H, W) inputs ``x`` and (N,) classes ``c`` (see the module doc)."""

    def __init__(self, channels: int, classes: int, width: int = 32, depth: int = 2):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.embed = nn.Embedding(classes, width)
        self.hidden = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth - 1))
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(cast(Tensor, self.out.bias))  # torch types a conv bias as optional; bias=True here

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = torch.relu(self.inp(x) + self.embed(c)[:, :, None, None])
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return x + self.out(h)


def generator_tensors(generator: ConditionalGenerator) -> dict[str, Tensor]:
    """The generator's weights as artifact tensors ``gen.<name>``."""
    return {PREFIX + k: v.detach().clone() for k, v in generator.state_dict().items()}


def is_generated(tensors: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(PREFIX) for k in tensors)


def from_tensors(tensors: Mapping[str, Tensor]) -> ConditionalGenerator:
    """The generator rebuilt from an artifact's ``gen.*`` tensors (its sizes read off their shapes)."""
    state = {k.removeprefix(PREFIX): v for k, v in tensors.items() if k.startswith(PREFIX)}
    try:
        width, channels = state["inp.weight"].shape[:2]
        classes = state["embed.weight"].shape[0]
        depth = 1 + sum(1 for k in state if k.startswith("hidden.") and k.endswith(".weight"))
        generator = ConditionalGenerator(channels, classes, width, depth).to(state["inp.weight"].device)
        generator.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError("the artifact's gen.* tensors are not a ddbench.budget.generator.ConditionalGenerator "
                         f"({str(exc).splitlines()[0]})") from None
    return generator


def generator_problem(tensors: Mapping[str, Tensor], num_classes: int | None) -> str | None:
    """Why an artifact's generator cannot decode its ``x`` (``None``: it can, or it stores none)."""
    if not is_generated(tensors):
        return None
    try:
        generator = from_tensors(tensors)
    except ValueError as exc:
        return str(exc)
    x = tensors.get("x")
    if x is None or x.dim() != 4 or x.shape[1] != generator.inp.in_channels:
        return f"its generator decodes (N, {generator.inp.in_channels}, H, W) inputs; store them as 'x'."
    if num_classes is None or generator.embed.num_embeddings != num_classes or len(x) % num_classes:
        return (f"its generator is conditioned on {generator.embed.num_embeddings} classes; the task has {num_classes} and "
                f"'x' has {len(x)} rows: store the inputs class by class, equally many per class.")
    return None


def decoded(artifact: Artifact) -> Artifact:
    """The artifact with ``x`` replaced by the stored generator's output (as it is when it stores none).

    The conditioning classes are implied by order: equal counts of class 0, then class 1..."""
    if not is_generated(artifact.tensors):
        return artifact
    generator = from_tensors(artifact.tensors)
    x = artifact.tensors["x"]
    classes = generator.embed.num_embeddings
    c = torch.arange(classes, device=x.device).repeat_interleave(len(x) // classes)
    with torch.no_grad():
        images = generator(x, c)
    tensors = {k: v for k, v in artifact.tensors.items() if not k.startswith(PREFIX)}
    return Artifact({**tensors, "x": images}, artifact.recipe, artifact.meta, artifact.teacher)
