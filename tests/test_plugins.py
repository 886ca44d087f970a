"""Plugin discovery, registration validation and the plugin-facing error messages."""
from __future__ import annotations

import types
from importlib import metadata

import pytest

from ddbench import Artifact, Distiller, hookimpl
from ddbench.errors import PluginError, SuiteError, UnknownNameError
from ddbench.plugins import PluginManager, instantiate


def plugin_with(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


class Echo(Distiller):
    name = "echo"
    description = "returns the first example of every class"

    def __init__(self, copies: int = 1):
        self.copies = copies

    def distill(self, task, budget, learner, context):
        return Artifact({"x": task.train.x[:1], "y": task.train.y[:1]})


def test_builtins_come_from_entry_points(manager):
    names = {ep.name for ep in metadata.entry_points(group="ddbench")}
    assert {"tasks", "learners", "baselines"} <= names
    assert set(manager.plugins) >= {"tasks", "learners", "baselines"}
    assert "entry point ddbench_baselines" in manager.plugins["baselines"].source
    assert {"random", "herding", "full"} <= set(manager.plugins["baselines"].registered["distiller"])
    assert {"digits", "multi-index", "mnist5k", "mnist1d", "cifar10"} <= set(manager.names("task"))
    assert {"convnet", "mlp", "two-layer"} <= set(manager.names("learner"))


def test_plugin_registered_in_code():
    pm = PluginManager()
    pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Echo)), "echo-plugin")
    assert pm.distillers.get("echo") is Echo
    assert pm.plugins["echo-plugin"].registered["distiller"] == ["echo"]
    assert instantiate(Echo, {"copies": 2}).copies == 2


def test_unknown_option_suggests_close_names():
    with pytest.raises(SuiteError, match="no option 'copis'.*Did you mean: copies"):
        instantiate(Echo, {"copis": 2})


def test_invalid_registration_names_the_plugin():
    pm = PluginManager()

    class NotADistiller:
        name = "broken"

    with pytest.raises(PluginError, match="plugin 'bad'.*'broken'.*not a subclass of ddbench.contracts.interfaces.Distiller"):
        pm.add(plugin_with(ddbench_register_distillers=lambda register: register(NotADistiller)), "bad")
    assert "bad" not in pm.plugins  # nothing half-registered is left behind
    with pytest.raises(PluginError, match="not a class"):
        pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Echo())), "bad2")


def test_duplicate_names_are_rejected():
    pm = PluginManager()
    pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Echo)), "first")
    with pytest.raises(PluginError, match="'echo', already registered by plugin 'first'"):
        pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Echo)), "second")


def test_misspelt_hook_is_an_error():
    pm = PluginManager()
    with pytest.raises(PluginError, match="plugin 'typo' has an invalid hook"):
        pm.add(plugin_with(ddbench_register_distiller=lambda register: None), "typo")


def test_plugin_raising_while_registering():
    def boom(register):
        raise RuntimeError("kaput")

    with pytest.raises(PluginError, match="plugin 'boom' raised while registering distillers: RuntimeError: kaput"):
        PluginManager().add(plugin_with(ddbench_register_distillers=boom), "boom")


class FakeEntryPoint:
    def __init__(self, name, value, target):
        self.name, self.value, self.dist, self._target = name, value, None, target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_point_import_failure_and_disable(monkeypatch):
    eps = [FakeEntryPoint("ok", "ok_mod", plugin_with(ddbench_register_distillers=lambda register: register(Echo))),
           FakeEntryPoint("broken", "broken_mod", ImportError("No module named 'broken_mod'"))]
    monkeypatch.setattr(metadata, "entry_points", lambda group: eps)
    with pytest.raises(PluginError, match="plugin 'broken' \\(broken_mod\\) failed to import.*DDBENCH_DISABLE_PLUGINS=broken"):
        PluginManager().load_entrypoints()
    monkeypatch.setenv("DDBENCH_DISABLE_PLUGINS", "broken")
    pm = PluginManager()
    pm.load_entrypoints()
    assert list(pm.plugins) == ["ok"]


def test_unknown_name_suggests_close_matches(manager):
    with pytest.raises(UnknownNameError, match="unknown task 'digts'. Did you mean: digits"):
        manager.tasks.get("digts")
    with pytest.raises(UnknownNameError, match="unknown distiller 'herdin'. Did you mean: herding"):
        manager.distillers.get("herdin")


def test_a_duck_typed_class_is_refused_at_registration():
    """A class with the right methods but not the interface's base used to pass registration and crash later."""
    class Duck:
        name = "duck"

        def distill(self, task, budget, learner, context):
            return None

        def supports(self, task, learner):
            return None

    pm = PluginManager()
    with pytest.raises(PluginError, match="'duck' .*not a subclass of ddbench.contracts.interfaces.Distiller.*subclass it"):
        pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Duck)), "ducks")
    assert "duck" not in pm.distillers


def test_missing_abstract_methods_and_default_learner_are_named():
    from ddbench.contracts.interfaces import Task

    class Half(Distiller):
        name = "half"

    class NoLearner(Task):
        name = "no-learner"

        def load(self):
            raise NotImplementedError

        def recipe(self, profile):
            raise NotImplementedError

    pm = PluginManager()
    with pytest.raises(PluginError, match="'half' without the Distiller method\\(s\\) distill"):
        pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Half)), "half")
    with pytest.raises(PluginError, match="task 'no-learner' without a `default_learner`"):
        pm.add(plugin_with(ddbench_register_tasks=lambda register: register(NoLearner)), "tasks")


def test_typed_registries(manager):
    from ddbench.contracts.interfaces import Learner, Task

    assert issubclass(manager.tasks.get("digits"), Task) and issubclass(manager.learners.get("mlp"), Learner)
    assert "dc" in manager.distillers and "dc" not in manager.learners
    with pytest.raises(UnknownNameError, match="unknown learner 'mpl'.*mlp"):
        manager.learners.get("mpl")


def test_hooks_are_called_through_pluggy_and_can_be_traced(monkeypatch, capsys):
    monkeypatch.setenv("DDBENCH_TRACE_PLUGINS", "1")
    pm = PluginManager()
    pm.add(plugin_with(ddbench_register_distillers=lambda register: register(Echo)), "traced")
    assert "ddbench_register_distillers" in capsys.readouterr().err
    with pytest.raises(PluginError, match="unhashable"):
        pm.add({"ddbench_register_tasks": None}, "a-dict")
