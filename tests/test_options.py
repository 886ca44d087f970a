"""Option values are checked one way (ddbench.contracts.options) and reach the user as one-line errors."""
from __future__ import annotations

import pytest

from ddbench.contracts import options
from ddbench.errors import SuiteError
from ddbench.plugins import instantiate


def test_helpers_name_the_option_and_the_allowed_values():
    options.one_of("mode", "unroll", ("unroll", "tesla"))
    options.positive(a=1, b=None, c=0.5)
    options.non_negative(a=0)
    options.within("m", 0.0, 0, 1)
    options.flags(a=True, b=False)
    with pytest.raises(ValueError, match="unknown mode 'x': use one of unroll, tesla"):
        options.one_of("mode", "x", ("unroll", "tesla"))
    with pytest.raises(ValueError, match="iterations must be positive \\(got 0\\)"):
        options.positive(iterations=0)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        options.non_negative(steps=-1)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\) \(got 1.0\)"):
        options.within("momentum", 1.0, 0, 1)
    with pytest.raises(ValueError, match=r"val_fraction must lie in \(0, 1\)"):
        options.within("val_fraction", 0, 0, 1, low_open=True)
    for not_a_flag in ("no", 1, None):
        with pytest.raises(ValueError, match=f"bf16 must be true or false \\(got {not_a_flag!r}\\)"):
            options.flags(bf16=not_a_flag)


@pytest.mark.parametrize("kind, name, bad, words", [
    ("distiller", "mtt", {"mode": "fast"}, "unknown mode 'fast'"),
    ("distiller", "mtt", {"num_experts": 0}, "num_experts must be positive"),
    ("distiller", "dc", {"momentum_img": 1.0}, "momentum_img must lie in"),
    ("distiller", "two-stage", {"objective": "x"}, "unknown objective 'x'"),
    ("distiller", "herding", {"features": "x"}, "unknown features 'x'"),
    ("learner", "convnet", {"norm": "layer"}, "unknown norm 'layer'"),
    ("learner", "mlp", {"depth": 0}, "depth must be positive"),
    ("learner", "convnet", {"ensemble": "no"}, "ensemble must be true or false"),
    ("learner", "resnet", {"bf16": "yes"}, "bf16 must be true or false"),
    ("distiller", "two-stage", {"learn_v": "maybe"}, "learn_v must be true or false"),
    ("task", "multi-index", {"link": "he4"}, "unknown link 'he4'"),
    ("task", "digits", {"val_fraction": 1.0}, "val_fraction must lie in"),
])
def test_every_builtin_checks_its_values_the_same_way(manager, kind, name, bad, words):
    with pytest.raises(SuiteError, match=f"bad options for {name!r}.*{words}"):
        instantiate(manager.registries[kind].get(name), bad)
