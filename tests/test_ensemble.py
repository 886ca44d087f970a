"""The vmapped evaluation ensemble (docs/methods.md §3, §13.3): each of the K models ends where
sequential training with the same seed ends, to floating-point tolerance."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from ddbench import Artifact, Budget, Distiller, Learner, Recipe, hookimpl
from ddbench.ops import steps
from ddbench.ops.ensemble import flat_parameters, grouped_layers, train_ensemble, vmap_unsupported
from ddbench.ops.steps import adamw_step, seeded, sgd_step, shuffles
from ddbench.ops.training import train_classifier
from ddbench.plugins import PluginManager, instantiate
from ddbench.results.records import CellResult
from ddbench.run.harness import Harness
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry

SEEDS = (0, 1, 2)
STRATEGY = "color_crop_cutout_flip_scale_rotate"  # every DSA family, flip included


@pytest.fixture(scope="module")
def small(digits):
    """digits at ipc=10 (100 real images, 10 per class) and its test split."""
    _, view, test = digits
    idx = torch.cat([view.class_index(c)[:10] for c in range(10)])
    return view, test, view.train.x[idx], view.train.y[idx]


def learner(manager, name="convnet", **options):
    return instantiate(manager.learners.get(name), {"width": 16, **options}, "quick")


def sequential(lrn, view, artifact, recipe):
    models = [lrn.build(view, s) for s in SEEDS]
    for seed, model in zip(SEEDS, models):
        train_classifier(model, artifact, recipe, torch.Generator().manual_seed(seed))
    return models


def together(lrn, view, artifact, recipe):
    models = [lrn.build(view, s) for s in SEEDS]
    mode = lrn.fit_ensemble(models, artifact, recipe, [torch.Generator().manual_seed(s) for s in SEEDS])
    return models, mode


def accuracy(model, test) -> float:
    with torch.no_grad():
        return 100.0 * (model(test.x).argmax(1) == test.y).float().mean().item()


@pytest.mark.parametrize("name", ["convnet", "mlp"])
@pytest.mark.parametrize("augment", ["none", "dsa", "dc"])
def test_ensemble_equals_sequential_per_model(manager, small, name, augment):
    """Same init, shuffle and augmentation draws per seed: parameters and test accuracies match."""
    view, test, x, y = small
    lrn = learner(manager, name)
    recipe = Recipe(epochs=6, lr=0.01, batch_size=32, augment=augment, dsa_strategy=STRATEGY)  # 4 steps/epoch, decay after 4
    seq = sequential(lrn, view, Artifact({"x": x, "y": y}), recipe)
    ens, mode = together(lrn, view, Artifact({"x": x, "y": y}), recipe)
    assert mode == "ensemble"
    for a, b in zip(seq, ens):
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5)
        assert accuracy(b, test) == pytest.approx(accuracy(a, test), abs=100.0 / len(test.y) + 1e-9)
    assert not torch.equal(ens[0].classifier.weight, ens[1].classifier.weight)  # each model its own seed


def test_draws_made_in_several_blocks_still_match(manager, small, monkeypatch):
    """Shuffles and DSA plans drawn a block of epochs at a time (here 3 epochs a block, 3 blocks):
    both paths cut the same blocks, so they still agree; the blocks cover every epoch once."""
    monkeypatch.setattr(steps, "BLOCK_DRAWS", 300)
    assert [list(b) for b in steps.epoch_blocks(6, 100)] == [[0, 1, 2], [3, 4, 5], [6]]
    view, test, x, y = small
    lrn = learner(manager)
    recipe = Recipe(epochs=6, lr=0.01, batch_size=32, augment="dsa", dsa_strategy=STRATEGY)
    seq = sequential(lrn, view, Artifact({"x": x, "y": y}), recipe)
    ens, _ = together(lrn, view, Artifact({"x": x, "y": y}), recipe)
    for a, b in zip(seq, ens):
        torch.testing.assert_close(b(test.x[:64]), a(test.x[:64]), rtol=1e-4, atol=1e-4)


def test_shuffles_are_permutations_drawn_from_the_generator():
    perms = steps.shuffles(torch.Generator().manual_seed(0), 50, 4, torch.device("cpu"))
    assert all(sorted(p.tolist()) == list(range(50)) for p in perms) and not torch.equal(perms[0], perms[1])
    assert torch.equal(perms, steps.shuffles(torch.Generator().manual_seed(0), 50, 4, torch.device("cpu")))


@pytest.mark.slow
def test_a_step_launches_the_same_kernels_for_any_number_of_models():
    """Shuffles and DSA draws are made a block at a time, so a training step issues one set of ops
    for all K models (on a GPU each op is a kernel launch): the ops of 5 more epochs, one block,
    are the same for K = 2 and K = 6. (One DSA family, so the CPU's skipping of identity stages
    cannot differ between runs.)"""
    from torch.profiler import ProfilerActivity, profile

    x, y = torch.randn(20, 1, 8, 8), torch.arange(10).repeat(2)

    def ops(k: int, epochs: int) -> int:
        models = [seeded(s, lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))) for s in range(k)]
        recipe = Recipe(epochs=epochs, batch_size=10, augment="dsa", dsa_strategy="rotate")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_ensemble(models, x, y, recipe, [torch.Generator().manual_seed(s) for s in range(k)])
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and
                   (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))

    per_ten_steps = {k: ops(k, 9) - ops(k, 4) for k in (2, 6)}
    assert per_ten_steps[2] == per_ten_steps[6] > 0, per_ten_steps


def test_generic_vmap_path_equals_sequential(small):
    """A vmappable model without ``layers()`` trains through vmap(grad) over functional_call."""
    _, test, x, y = small
    build = [lambda s=s: seeded(s, lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                                               torch.nn.Linear(32, 10))) for s in SEEDS]
    recipe = Recipe(epochs=4, lr=0.05, batch_size=32, augment="dsa", dsa_strategy=STRATEGY)
    seq, ens = [b() for b in build], [b() for b in build]
    for seed, model in zip(SEEDS, seq):
        train_classifier(model, Artifact({"x": x, "y": y}), recipe, torch.Generator().manual_seed(seed))
    assert grouped_layers(ens[0]) is None
    train_ensemble(ens, x, y, recipe, [torch.Generator().manual_seed(s) for s in SEEDS])
    for a, b in zip(seq, ens):
        torch.testing.assert_close(b(test.x), a(test.x), rtol=1e-4, atol=1e-5)


def test_learned_lr_and_soft_labels(manager, small):
    """lr_from_artifact (MTT) and soft label rows train identically in both paths."""
    view, test, x, y = small
    lrn = learner(manager)
    soft = torch.softmax(F.one_hot(y, 10).float() * 3.0, dim=1)
    artifact = Artifact({"x": x, "y": soft, "lr": torch.tensor(0.2)})
    recipe = Recipe(epochs=3, batch_size=50, augment="dsa", dsa_strategy=STRATEGY, lr_from_artifact="lr")
    seq = sequential(lrn, view, artifact, recipe)
    ens, _ = together(lrn, view, artifact, recipe)
    for a, b in zip(seq, ens):
        torch.testing.assert_close(b(test.x[:64]), a(test.x[:64]), rtol=1e-4, atol=1e-4)
    slow = sequential(lrn, view, Artifact({"x": x, "y": soft, "lr": torch.tensor(0.001)}), recipe)
    assert not torch.allclose(slow[0](test.x[:64]), seq[0](test.x[:64]), atol=1e-3)


def test_sgd_step_matches_torch_sgd_including_momentum_reset():
    """Stacked SGD == torch.optim.SGD (momentum, weight decay), bitwise, across a rebuilt optimiser."""
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    mine = [p.clone() for p in ref]
    grads = [[torch.randn(p.shape, generator=gen) for p in ref] for _ in range(5)]
    refp = [torch.nn.Parameter(p) for p in ref]
    opt = torch.optim.SGD(refp, lr=0.1, momentum=0.9, weight_decay=5e-4)
    buffers = None
    for step, gs in enumerate(grads):
        if step == 3:  # the lr decay rebuilds the optimiser: momentum restarts
            opt, buffers = torch.optim.SGD(refp, lr=0.01, momentum=0.9, weight_decay=5e-4), None
        for p, g in zip(refp, gs):
            p.grad = g.clone()
        opt.step()
        buffers = sgd_step(mine, [g.clone() for g in gs], buffers, 0.1 if step < 3 else 0.01, 0.9, 5e-4)
    for a, b in zip(refp, mine):
        assert torch.equal(a.detach(), b)


def test_adamw_step_matches_torch_adamw_including_a_reset():
    """Stacked AdamW == torch.optim.AdamW (decoupled weight decay, bias correction), across a rebuilt optimiser."""
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    mine = [p.clone() for p in ref]
    grads = [[torch.randn(p.shape, generator=gen) for p in ref] for _ in range(5)]
    refp = [torch.nn.Parameter(p) for p in ref]
    opt = torch.optim.AdamW(refp, lr=0.01, weight_decay=0.01)
    state = None
    for step, gs in enumerate(grads):
        if step == 3:
            opt, state = torch.optim.AdamW(refp, lr=0.001, weight_decay=0.01), None
        for p, g in zip(refp, gs):
            p.grad = g.clone()
        opt.step()
        state = adamw_step(mine, [g.clone() for g in gs], state, 0.01 if step < 3 else 0.001, 0.01)
    for a, b in zip(refp, mine):
        torch.testing.assert_close(b, a.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer,schedule,augment,kd", [
    ("adamw", "cosine", "none", {}), ("adamw", "cosine", "dsa", {}), ("sgd", "step", "dsa", {}), ("adamw", "step", "none", {}),
    ("adamw", "cosine", "crop_flip", {"mixup": 0.8, "crop_fill": (-0.8,)}),  # the CIFAR student protocol
    ("adamw", "cosine", "crop", {"mixup": 0.8, "teacher_mode": "train", "kd_t2": False})])  # with the official teacher mode
def test_the_teacher_regime_trains_as_an_ensemble_equal_to_sequential(manager, small, optimizer, schedule, augment, kd):
    """KD to the stored teacher (its prediction on each model's own augmented and mixed batch,
    temperature 4), with either optimiser and schedule and either teacher mode: each model ends
    where sequential training ends."""
    from ddbench.budget.labels import build_teacher, teacher_tensors

    view, test, x, _ = small
    spec = "convnet:width=8,depth=2,norm=batchnorm"
    teacher = instantiate(manager.learners.get("convnet"), {"width": 8, "depth": 2, "norm": "batchnorm"}, "quick").build(view, 5)
    artifact = Artifact({"x": x, **teacher_tensors(teacher)}, {"teacher": spec})
    artifact.teacher = build_teacher(artifact.tensors, spec, view, manager.learners, "cpu")
    recipe = Recipe(epochs=5, batch_size=32, optimizer=optimizer, schedule=schedule, lr=1e-3 if optimizer == "adamw" else 0.01,
                    weight_decay=0.01, temperature=4.0, augment=augment, dsa_strategy=STRATEGY).updated(kd)
    lrn = learner(manager)
    seq = sequential(lrn, view, artifact, recipe)
    ens, mode = together(lrn, view, artifact, recipe)
    assert mode == "ensemble"
    for a, b in zip(seq, ens):
        torch.testing.assert_close(b(test.x[:64]), a(test.x[:64]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ens[0](test.x[:64]), ens[1](test.x[:64]))


def test_batchnorm_falls_back_to_sequential_and_says_so(manager, small):
    view, _, x, y = small
    lrn = learner(manager, norm="batchnorm")
    recipe = Recipe(epochs=2, batch_size=50)
    seq = sequential(lrn, view, Artifact({"x": x, "y": y}), recipe)
    ens, mode = together(lrn, view, Artifact({"x": x, "y": y}), recipe)
    assert mode.startswith("sequential: BatchNorm2d")
    for a, b in zip(seq, ens):
        assert all(torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="cannot train these models as a vmapped ensemble: BatchNorm2d"):
        train_ensemble(ens, x, y, recipe, [torch.Generator() for _ in ens])


def test_engine_rejects_mismatched_inputs(manager, small):
    view, _, x, y = small
    convnet, mlp = learner(manager).build(view, 0), learner(manager, "mlp").build(view, 0)
    assert vmap_unsupported([convnet, mlp]) == "the models differ in architecture"
    assert vmap_unsupported([convnet, learner(manager, width=8).build(view, 0)]) == "the models differ in architecture"
    with pytest.raises(ValueError, match="2 models but 1 generators"):
        train_ensemble([convnet, learner(manager).build(view, 1)], x, y, Recipe(epochs=0), [torch.Generator()])


def test_on_epoch_gives_flat_trajectories_for_experts(manager, small):
    """The MTT expert use (§7): constant lr, no momentum or weight decay, a flat vector per epoch;
    equal to a plain per-model SGD loop with the same seeds."""
    view, _, x, y = small
    lrn = learner(manager)
    recipe = Recipe(epochs=3, lr=0.05, momentum=0.0, weight_decay=0.0, batch_size=40)
    experts = [lrn.build(view, s) for s in SEEDS]
    trajectory = []
    train_ensemble(experts, x, y, recipe, [torch.Generator().manual_seed(s) for s in SEEDS], lr_decay=False,
                   on_epoch=lambda epoch, params: trajectory.append((epoch, flat_parameters(params).clone())))
    assert [e for e, _ in trajectory] == [0, 1, 2, 3]
    final = torch.stack([torch.cat([p.detach().flatten() for p in m.parameters()]) for m in experts])
    assert trajectory[-1][1].shape == (len(SEEDS), sum(p.numel() for p in experts[0].parameters()))
    assert torch.equal(trajectory[-1][1], final)
    for seed, expert in zip(SEEDS, experts):  # reference: torch.optim.SGD at a constant lr
        model, gen = lrn.build(view, seed), torch.Generator().manual_seed(seed)
        torch.randint(2**62, (1,), generator=gen)  # the augmentation seed train_classifier draws first
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for perm in shuffles(gen, len(x), 4, torch.device("cpu")):  # all 4 epochs in one block
            for i in range(0, len(x), 40):
                opt.zero_grad()
                F.cross_entropy(model(x[perm[i : i + 40]]), y[perm[i : i + 40]]).backward()
                opt.step()
        for pa, pb in zip(model.parameters(), expert.parameters()):
            torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5)


def test_bf16_is_ignored_on_cpu_with_a_note(manager, small):
    view, _, x, y = small
    recipe = Recipe(epochs=1, batch_size=50)
    plain, _ = together(learner(manager), view, Artifact({"x": x, "y": y}), recipe)
    bf16, mode = together(learner(manager, bf16=True), view, Artifact({"x": x, "y": y}), recipe)
    assert mode == "ensemble (bf16 ignored on cpu)"
    assert all(torch.equal(a, b) for m1, m2 in zip(plain, bf16) for a, b in zip(m1.parameters(), m2.parameters()))


class Subset(Distiller):
    """The first ipc train examples per class, evaluated for 2 epochs (keeps the harness test fast)."""

    name = "subset"

    def distill(self, task, budget, learner, context):
        idx = torch.cat([task.class_index(c)[: budget.ipc(task)] for c in range(task.num_classes)])
        return Artifact({"x": task.train.x[idx], "y": task.train.y[idx]}, recipe={"epochs": 2})


class Plain(Learner):
    """A linear classifier with only the required interface (no ``fit_ensemble``)."""

    name = "plain"

    def build(self, task, seed):
        return seeded(seed, lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(task.input_size, task.num_classes)))

    def fit(self, model, artifact, recipe, generator):
        return train_classifier(model, artifact, recipe, generator)


@pytest.mark.slow
def test_harness_uses_the_ensemble_and_records_it(tmp_path):
    """Same per-seed accuracies through the harness with and without the ensemble; eval_mode says which."""
    pm = PluginManager()
    pm.load_entrypoints()
    pm.add(types.SimpleNamespace(ddbench_register_distillers=hookimpl(lambda register: register(Subset)),
                                 ddbench_register_learners=hookimpl(lambda register: register(Plain))), "test-plugin")
    harness = Harness(pm, "cpu", cache_dir=tmp_path)

    def run(learner: str, options: dict) -> CellResult:
        task = TaskEntry("digits", [Budget.parse("ipc=5")], {}, learner, options)
        return harness.run_cell(next(harness.cells(Suite("t", [task], [DistillerEntry("subset")], "quick", 3, [0]))))

    ens, seq = run("convnet", {"width": 16}), run("convnet", {"width": 16, "ensemble": False})
    assert (ens.status, ens.eval_mode) == ("ok", "ensemble")
    assert (seq.status, seq.eval_mode) == ("ok", "sequential: ensemble=False")
    assert len(ens.values) == 3 and ens.values == pytest.approx(seq.values, abs=100.0 / 450 + 1e-9)
    assert run("plain", {}).eval_mode == "sequential"  # a learner without fit_ensemble: the harness's loop


@pytest.mark.parametrize("name,options", [("convnet", {"width": 8, "depth": 2, "norm": "batchnorm"}), ("resnet", {"width": 4})])
def test_a_train_mode_teacher_runs_the_models_batches_as_one_forward(manager, small, name, options):
    """The teacher's one forward over K stacked batches gives each batch what its own forward gives
    (BatchNorm normalising it by its own statistics); a teacher with dropout is not grouped."""
    from ddbench.ops.ensemble import batches_teacher

    view, _, x, _ = small
    teacher = instantiate(manager.learners.get(name), options, "quick").build(view, 0).train()
    xb = x[:48].view(3, 16, *x.shape[1:])
    with torch.no_grad():
        alone = torch.stack([teacher(b) for b in xb])
        together = batches_teacher(teacher, 3)(xb)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert batches_teacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(), torch.nn.LazyLinear(10)), 3) is None
