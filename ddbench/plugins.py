"""Plugin discovery (the ``ddbench`` entry-point group) and the registries it fills."""
from __future__ import annotations

import inspect
import os
import re
import sys
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

import pluggy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ddbench.contracts import hookspecs
from ddbench.contracts.analysis import Analysis
from ddbench.contracts.executor import Executor
from ddbench.contracts.interfaces import INTERFACES, Distiller, Learner, Task
from ddbench.errors import DDBenchWarning, PluginError, SuiteError, close_names, unknown

ENTRY_POINT_GROUP = "ddbench"
DISABLE_ENV = "DDBENCH_DISABLE_PLUGINS"
TRACE_ENV = "DDBENCH_TRACE_PLUGINS"  # set: every hook call and its result are written to stderr
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
KINDS = ("task", "learner", "distiller", "analysis", "executor")


@dataclass
class PluginInfo:
    """One loaded plugin: where it came from and what it registered."""

    name: str
    version: str
    source: str
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})


T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> class for one kind of component; a class is admitted when it subclasses the kind's
    interface (``base``), implements its abstract methods and has a valid, unique ``name``."""

    def __init__(self, kind: str, base: type[T] | None = None):
        self.kind = kind
        self.base: type[T] = base if base is not None else INTERFACES[kind]
        self.items: dict[str, type[T]] = {}
        self.owner: dict[str, str] = {}

    def register(self, cls: Any, plugin: str) -> None:
        what = f"plugin {plugin!r} registered"
        base = self.base.__name__
        if not inspect.isclass(cls):
            raise PluginError(f"{what} {cls!r} as a {self.kind}, but it is not a class: register the {self.kind} class itself.")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PluginError(
                f"{what} {self.kind} class {cls.__qualname__} without a valid `name` "
                f"(lower-case letters, digits, '-', '_'): set the class attribute `name`."
            )
        if not issubclass(cls, self.base):
            raise PluginError(f"{what} {self.kind} {name!r} ({cls.__qualname__}), which is not a subclass of "
                              f"{self.base.__module__}.{base}: subclass it (`class {cls.__name__}({base}): ...`).")
        abstract = sorted(getattr(cls, "__abstractmethods__", ()))
        if abstract:
            raise PluginError(f"{what} {self.kind} {name!r} without the {base} method(s) {', '.join(abstract)}: implement them.")
        if self.base is Task and not isinstance(getattr(cls, "default_learner", None), str):
            raise PluginError(f"{what} task {name!r} without a `default_learner`: set it to the name of a registered learner.")
        if name in self.items:
            raise PluginError(
                f"{what} {self.kind} {name!r}, already registered by plugin {self.owner[name]!r}: rename one of them."
            )
        self.items[name] = cls
        self.owner[name] = plugin

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, or a one-line error suggesting close names."""
        if name not in self.items:
            raise unknown(self.kind, name, self.items, f"See `ddbench ls {plural(self.kind)}`.")
        return self.items[name]

    def names(self) -> list[str]:
        return sorted(self.items)

    def __contains__(self, name: object) -> bool:
        return name in self.items


def options_of(cls: type[Any]) -> dict[str, Any]:
    """The constructor options of a component class and their defaults."""
    if cls.__init__ is object.__init__:  # no options (and no slow signature parse of a builtin)
        return {}
    params = inspect.signature(cls).parameters.values()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name: (None if p.default is p.empty else p.default) for p in params if p.kind in kinds}


def check_options(cls: type[Any], options: dict[str, Any]) -> None:
    """Reject option names the component's constructor does not take, suggesting close ones."""
    allowed = options_of(cls)
    for key in options:
        if key not in allowed:
            raise SuiteError(
                f"{cls.name!r} has no option {key!r}.{close_names(key, allowed)} "
                f"Options: {', '.join(sorted(allowed)) or '(none)'}."
            )


def parse_named(text: str) -> tuple[str, dict[str, Any]]:
    """``'multi-index:d=64,r=3,link=he2'`` -> ``('multi-index', {'d': 64, 'r': 3, 'link': 'he2'})``."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SuiteError(f"malformed option {part!r} in {text!r}: write NAME:key=value,key=value.")
        try:
            options[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = value.strip()
    return name.strip(), options


def instantiate(cls: type[Any], options: dict[str, Any], profile: str = "full") -> Any:
    """Build a component from user ``options`` over the ``quick`` profile's values."""
    check_options(cls, options)
    merged = {**(getattr(cls, "quick", {}) if profile == "quick" else {}), **options}
    try:
        return cls(**merged)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"bad options for {cls.name!r} {merged}: {exc}") from exc


class PluginManager:
    """Loads plugins and holds the task, learner and distiller registries."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("ddbench")
        self.pm.add_hookspecs(hookspecs)
        self.tasks: Registry[Task] = Registry("task", Task)
        self.learners: Registry[Learner] = Registry("learner", Learner)
        self.distillers: Registry[Distiller] = Registry("distiller", Distiller)
        self.analyses: Registry[Analysis] = Registry("analysis", Analysis)
        self.executors: Registry[Executor] = Registry("executor", Executor)
        self.registries: dict[str, Registry[Any]] = {"task": self.tasks, "learner": self.learners, "distiller": self.distillers,
                                                     "analysis": self.analyses, "executor": self.executors}
        self.plugins: dict[str, PluginInfo] = {}
        if os.environ.get(TRACE_ENV):
            self.pm.trace.root.setwriter(lambda text: print(text, end="", file=sys.stderr))
            self.pm.enable_tracing()

    # -- loading -----------------------------------------------------------------------------
    def load_entrypoints(self, disabled: Iterable[str] | None = None) -> None:
        """Import and register every plugin of the ``ddbench`` entry-point group."""
        if disabled is None:
            disabled = [d.strip() for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()]
        disabled = set(disabled)
        entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        installed = {ep.name for ep in entry_points}
        for name in sorted(disabled - installed):
            warnings.warn(DDBenchWarning(f"{DISABLE_ENV} names {name!r}, which is not an installed plugin, so it disables nothing."
                                         f"{close_names(name, installed)} Installed: {', '.join(sorted(installed))}."), stacklevel=2)
        for ep in entry_points:
            if ep.name in disabled or ep.name in self.plugins:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # any import failure becomes a named error
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}. "
                    f"Fix or uninstall it, or set {DISABLE_ENV}={ep.name}."
                ) from exc
            dist = ep.dist
            version = dist.version if dist is not None else "?"
            source = dist.metadata["Name"] if dist is not None else ep.value
            self.add(module, ep.name, version=version, source=f"{source} (entry point {ep.value})")

    def add(self, plugin: object, name: str, version: str = "?", source: str = "registered in code") -> None:
        """Register one plugin object (a module or an instance with ``ddbench_*`` hooks)."""
        if name in self.plugins:
            raise PluginError(f"plugin {name!r} is already loaded: give the new one another name.")
        if isinstance(plugin, types.SimpleNamespace):
            plugin = _Namespace(**vars(plugin))  # pluggy's per-plugin hook calls need a hashable plugin
        try:
            hash(plugin)
        except TypeError:
            raise PluginError(f"plugin {name!r} is an unhashable {type(plugin).__name__}: register a module, "
                              "a class instance or a types.SimpleNamespace.") from None
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} has an invalid hook: {exc}. "
                              "Hooks must be named ddbench_* (see ddbench.contracts.hookspecs).") from exc
        info = PluginInfo(name, version, source)
        self.plugins[name] = info
        hooks = {"task": "ddbench_register_tasks", "learner": "ddbench_register_learners",
                 "distiller": "ddbench_register_distillers", "analysis": "ddbench_register_analyses",
                 "executor": "ddbench_register_executors"}
        for kind, hook in hooks.items():
            def register(cls: Any, _kind: str = kind) -> None:
                self.registries[_kind].register(cls, name)
                info.registered[_kind].append(cls.name)
            try:
                self.hook_of(plugin, hook)(register=register)
            except PluginError:
                self._forget(name)
                raise
            except Exception as exc:  # any failure while registering becomes a named error
                self._forget(name)
                raise PluginError(f"plugin {name!r} raised while registering {plural(kind)}: {type(exc).__name__}: {exc}") from exc

    def hook_of(self, plugin: object, hook: str) -> Any:
        """The caller of ``hook`` for ``plugin`` alone (pluggy's subset caller, so hook wrappers and
        tracing apply): each plugin registers exactly once, when it is added."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def _forget(self, name: str) -> None:
        for registry in self.registries.values():
            for item in [n for n, owner in registry.owner.items() if owner == name]:
                del registry.items[item], registry.owner[item]
        self.plugins.pop(name, None)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    # -- lookup ------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return self.registries[kind].names()

    def owner(self, kind: str, name: str) -> str:
        return self.registries[kind].owner[name]

    def modules(self) -> list[str]:
        """The modules that define the registered classes (the cell workers' fork server imports them once)."""
        return sorted({cls.__module__ for registry in self.registries.values() for cls in registry.items.values()})

    # -- commands and reports (ddbench_register_commands, ddbench_register_reports) ------------
    def commands(self) -> list[tuple[str, hookspecs.Command]]:
        """``(plugin, command)`` for every subcommand the plugins register, by command name."""
        return self._gather("ddbench_register_commands", hookspecs.Command, "command")

    def reports(self) -> list[tuple[str, hookspecs.Report]]:
        """``(plugin, report)`` for every report the plugins register, by report name."""
        return self._gather("ddbench_register_reports", hookspecs.Report, "report")

    def _gather(self, hook: str, cls: type[Any], what: str) -> list[tuple[str, Any]]:
        """Call ``hook`` once per plugin with a ``register`` that checks each object and its name."""
        found: dict[str, tuple[str, Any]] = {}
        for name in list(self.plugins):
            def register(item: Any, _plugin: str = name) -> None:
                said = f"plugin {_plugin!r} registered"
                if not isinstance(item, cls):
                    raise PluginError(f"{said} {item!r} as a {what}: register a ddbench.contracts.hookspecs.{cls.__name__}(...).")
                if not isinstance(item.name, str) or not NAME_RE.match(item.name):
                    raise PluginError(f"{said} a {what} named {item.name!r}: use lower-case letters, digits, '-', '_'.")
                if item.name in found:
                    raise PluginError(f"{said} {what} {item.name!r}, already registered by plugin {found[item.name][0]!r}: "
                                      "rename one of them.")
                found[item.name] = (_plugin, item)
            try:
                self.hook_of(self.pm.get_plugin(name), hook)(register=register)
            except PluginError:
                raise
            except Exception as exc:  # any failure becomes a named error
                raise PluginError(f"plugin {name!r} raised while registering {what}s: {type(exc).__name__}: {exc}") from exc
        return [found[k] for k in sorted(found)]


def plural(kind: str) -> str:
    """``analysis`` -> ``analyses``, ``task`` -> ``tasks``."""
    return "analyses" if kind == "analysis" else f"{kind}s"


class _Namespace(types.SimpleNamespace):
    """A ``SimpleNamespace`` plugin, hashable by identity."""

    __hash__ = object.__hash__  # type: ignore[assignment]  # typeshed types SimpleNamespace as unhashable (None)


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _default
    if _default is None:
        manager = PluginManager()
        manager.load_entrypoints()
        _default = manager
    return _default


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests; after installing a plugin)."""
    global _default
    _default = None
