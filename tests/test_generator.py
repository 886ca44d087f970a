"""The stored conditional generator (ddbench.budget.generator): identity at init, rebuilt from its
tensors, decoded by every classifier learner, refused when malformed."""
from __future__ import annotations

import torch

from ddbench.budget.artifact import admission_problems
from ddbench.budget.generator import ConditionalGenerator, decoded, from_tensors, generator_tensors
from ddbench.contracts.interfaces import Artifact
from ddbench.contracts.recipe import Recipe
from ddbench.ops.steps import stage_parts
from ddbench.testing.tasks import TinyClassification, task_view

VIEW = task_view(TinyClassification())  # 3 classes, (1, 8, 8)


def trained_generator() -> ConditionalGenerator:
    g = ConditionalGenerator(1, 3, width=4, depth=2)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return g


def test_an_untrained_generator_is_the_identity_at_any_size():
    g = ConditionalGenerator(1, 3, width=4)
    for size in (8, 28):
        x = torch.randn(6, 1, size, size)
        assert torch.equal(g(x, torch.arange(3).repeat(2)), x)


def test_the_generator_is_rebuilt_from_its_tensors_and_decodes_x_by_class_order():
    g = trained_generator()
    x = torch.randn(6, 1, 8, 8)
    art = Artifact({"x": x, "y": torch.arange(3).repeat_interleave(2), **generator_tensors(g)})
    rebuilt = from_tensors(art.tensors)
    assert rebuilt.embed.num_embeddings == 3 and len(rebuilt.hidden) == 1
    out = decoded(art)
    assert sorted(out.tensors) == ["x", "y"]
    with torch.no_grad():
        assert torch.allclose(out.x, g(x, torch.tensor([0, 0, 1, 1, 2, 2])))
    (part, lr), = stage_parts(art, Recipe(lr=0.1))  # what every classifier learner trains from
    assert torch.equal(part.x, out.x) and lr == 0.1


def test_generator_weights_are_counted_and_malformed_ones_refused(manager):
    learner = manager.learners.get("convnet")
    g = trained_generator()
    art = Artifact({"x": torch.randn(6, 1, 8, 8), "y": torch.arange(3).repeat_interleave(2), **generator_tensors(g)})
    assert admission_problems(art, VIEW, None, "t", learner) == []
    odd = Artifact({**art.tensors, "x": torch.randn(5, 1, 8, 8), "y": torch.arange(5) % 3})
    found = admission_problems(odd, VIEW, None, "t", learner)
    assert len(found) == 1 and "equally many per class" in found[0].message
    broken = {k: v for k, v in art.tensors.items() if k != "gen.embed.weight"}
    found = admission_problems(Artifact(broken), VIEW, None, "t", learner)
    assert len(found) == 1 and "not a ddbench.budget.generator.ConditionalGenerator" in found[0].message
