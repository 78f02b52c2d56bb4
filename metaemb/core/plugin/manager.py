"""The plugin manager: entry points, per-plugin error isolation, and the component registries.

Loading is lazy (on first use), idempotent and per process, so DataLoader workers and DDP ranks
each load once. A plugin that fails to import is reported and skipped unless
METAEMB_STRICT_PLUGINS=1; METAEMB_DISABLE_PLUGINS=a,b blocks plugins by name.

A plugin may add hook specifications of its own (for a component kind only it knows, such as
the vision plugin's landmark sources): its module names them in `metaemb_hookspecs` (a module,
or its dotted name, holding `@hookspec` functions and a `COMPONENT_KINDS` {kind: hook name}
table). Pluggy keeps implementations registered before their spec and checks them when it is
added, so plugins that implement such a hook may load before or after the plugin declaring it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from metaemb.core.errors import PluginError, suggest
from metaemb.core.plugin import hookspecs
from metaemb.core.plugin.install_checks import check_disabled, warn_look_alike_groups
from metaemb.core.plugin.registry import KINDS, Registry

GROUP = "metaemb"
CORE_PLUGINS = ("metaemb.core.plugin.builtins",)


@dataclass
class PluginInfo:
    """What `metaemb plugins` shows for one plugin."""

    name: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FailedPlugin:
    """A plugin that did not load (`skipped` empty), or one of whose hooks failed: its
    components of that kind (`skipped`) are left out, the others are there."""

    name: str
    error: str
    skipped: str = ""

    def summary(self) -> str:
        """One line for `metaemb plugins` and `doctor`."""
        if self.skipped:
            return f"plugin {self.name}: its {self.skipped} were skipped: {self.error}"
        return f"plugin failed to load: {self.name}: {self.error}"


class PluginState:
    """A loaded plugin manager plus the registries built from its hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.kinds: dict[str, str] = dict(KINDS)  # core kinds + those plugins declare
        self._spec_modules: set[str] = set()
        self.versions: dict[str, str] = {}
        self.failed: list[FailedPlugin] = []
        self.disabled: list[str] = []  # installed plugins METAEMB_DISABLE_PLUGINS blocks
        self._registries: dict[str, Registry] | None = None
        self.commands: dict[str, list[str]] = {}  # plugin → the commands it added to the CLI

    # -- loading -------------------------------------------------------------------------
    def load(self) -> None:
        disabled = disabled_plugins()
        for modname in CORE_PLUGINS:
            self.pm.register(importlib.import_module(modname), name="core")
            self.versions["core"] = _dist_version("metaemb")
        for name in disabled - {"core"}:  # blocking core would unregister every built-in
            self.pm.set_blocked(name)
        strict = strict_mode()
        entry_points = sorted(  # metaemb's own first: a third party never replaces them
            metadata.entry_points(group=GROUP), key=lambda e: (_dist_name(e) != "metaemb", e.name)
        )
        self.disabled = check_disabled(disabled, [ep.name for ep in entry_points])
        loaded: dict[str, metadata.EntryPoint] = {}
        for ep in entry_points:
            if ep.name in disabled:
                continue
            if self.pm.has_plugin(ep.name):
                self._skip_taken_name(ep, loaded.get(ep.name), strict)
                continue
            loaded[ep.name] = ep
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self.add_plugin_hookspecs(plugin)
            except Exception as exc:  # isolate any failure of a third-party plugin
                message = f"{type(exc).__name__}: {exc}"
                if strict:
                    raise PluginError(
                        f"plugin '{ep.name}' ({ep.value}) failed to load: {message}"
                    ) from exc
                self.failed.append(FailedPlugin(ep.name, message))
                warnings.warn(
                    f"metaemb plugin '{ep.name}' failed to load and is skipped: {message} "
                    "(set METAEMB_STRICT_PLUGINS=1 to make this fatal)",
                    stacklevel=2,
                )
                continue
            dist = getattr(ep, "dist", None)
            self.versions[ep.name] = getattr(dist, "version", None) or "unknown"
            self.check_implements_something(ep.name, plugin, strict)
        self.check_hook_names(strict)
        warn_look_alike_groups()

    def _skip_taken_name(
        self, ep: metadata.EntryPoint, first: metadata.EntryPoint | None, strict: bool
    ) -> None:
        """A second entry point under a plugin name already loaded (a third party's `vision`)
        is skipped and named: it used to replace a built-in, or vanish, without a word."""
        if first is not None and first.value == ep.value:
            return  # the same plugin listed twice (an editable install's two records)
        owner = f"{_dist_name(first)}'s" if first is not None else "metaemb's built-in"
        own = sorted(
            {"core"}
            | {e.name for e in metadata.entry_points(group=GROUP) if _dist_name(e) == "metaemb"}
        )
        message = (
            f"plugin entry point '{ep.name}' ({ep.value}) of {_dist_name(ep) or '?'} has the "
            f"name of {owner} plugin '{ep.name}' and is skipped: entry-point names must be "
            f"unique, and {', '.join(own)} are metaemb's; rename it in its pyproject.toml."
        )
        if strict:
            raise PluginError(message)
        # named by its package too: "failed to load vision" read as the built-in one failing
        self.failed.append(FailedPlugin(f"{ep.name} (from {_dist_name(ep) or ep.value})", message))
        warnings.warn(message, stacklevel=3)

    def check_implements_something(self, name: str, plugin: object, strict: bool) -> None:
        """A plugin whose module implements no hook registers nothing: usually its functions
        lack the `@metaemb.hookimpl` decorator, which pluggy needs to see them."""
        callers = self.pm.get_hookcallers(plugin) or []
        if callers:
            self._check_undecorated(name, plugin, {c.name for c in callers}, strict)
        if callers or hasattr(plugin, "metaemb_hookspecs"):
            return  # (a plugin may only declare hooks for others)
        undecorated = sorted(n for n in dir(plugin) if n.startswith("register_"))
        hint = (
            f" It defines {', '.join(undecorated)} without `@metaemb.hookimpl` above"
            if undecorated
            else " Its entry point should name the module holding the `@metaemb.hookimpl` functions"
        )
        message = (
            f"plugin '{name}' ({getattr(plugin, '__name__', type(plugin).__name__)}) implements "
            f"no metaemb hook, so it registers nothing.{hint} (docs/plugins.md)"
        )
        if strict:
            raise PluginError(message + ".")
        warnings.warn(message + "; set METAEMB_STRICT_PLUGINS=1 to make this fatal.", stacklevel=3)

    def _check_undecorated(
        self, name: str, plugin: object, implemented: set[str], strict: bool
    ) -> None:
        """A function named exactly as a hook, beside decorated ones, that lacks the decorator:
        pluggy never calls it, and its components were "unknown" without a reason."""
        specs = {n for n, c in vars(self.pm.hook).items()
                 if isinstance(c, pluggy.HookCaller) and c.has_spec()}  # fmt: skip
        missed = sorted(n for n in specs - implemented if callable(getattr(plugin, n, None)))
        if not missed:
            return
        message = (
            f"plugin '{name}' defines {', '.join(missed)} without `@metaemb.hookimpl` above it, "
            "so it is never called (its decorated hooks are) (docs/plugins.md)"
        )
        if strict:
            raise PluginError(message + ".")
        warnings.warn(message + "; set METAEMB_STRICT_PLUGINS=1 to make this fatal.", stacklevel=4)

    def check_hook_names(self, strict: bool) -> None:
        """A hook implementation whose name no hookspec declares is never called: say so
        (pluggy accepts it silently), with the closest hook name."""
        callers = {n: c for n, c in vars(self.pm.hook).items() if isinstance(c, pluggy.HookCaller)}
        specs = [n for n, c in callers.items() if c.has_spec()]
        for name, caller in sorted(callers.items()):
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                message = (f"plugin '{impl.plugin_name}' implements '{name}', which is not a "
                           f"metaemb hook, so it is never called;{suggest(name, specs)} The "
                           "hooks are listed in docs/plugins.md")  # fmt: skip
                if strict:
                    raise PluginError(message + ".")
                warnings.warn(message + " (set METAEMB_STRICT_PLUGINS=1 to make this fatal).",
                              stacklevel=3)  # fmt: skip

    def add_plugin_hookspecs(self, plugin: object) -> None:
        """Add the hookspecs (and component kinds) a plugin declares in `metaemb_hookspecs`."""
        specs = getattr(plugin, "metaemb_hookspecs", None)
        if specs is None:
            return
        if isinstance(specs, str):
            specs = importlib.import_module(specs)
        key = getattr(specs, "__name__", None) or repr(specs)
        if key in self._spec_modules:
            return
        self.pm.add_hookspecs(specs)
        self._spec_modules.add(key)
        self.kinds.update(getattr(specs, "COMPONENT_KINDS", {}))
        self.invalidate()

    # -- registries ----------------------------------------------------------------------
    def invalidate(self) -> None:
        self._registries = None

    def registries(self) -> dict[str, Registry]:
        if self._registries is None:
            # before any hook runs: plugins whose import failed
            unloaded = {f.name: f.error for f in self.failed if not f.skipped}
            registries = {kind: Registry(kind, self.disabled, unloaded) for kind in self.kinds}
            for kind, hook_name in self.kinds.items():
                hook = getattr(self.pm.hook, hook_name, None)
                if hook is None:  # nobody implements it
                    continue
                impls = hook.get_hookimpls()  # registration order: entry points by name
                impls.sort(key=lambda impl: not self.is_own(impl.plugin))  # metaemb's first
                for impl in impls:
                    self._call_hook(impl, kind, hook_name, registries)
            self._registries = registries
        return self._registries

    def _call_hook(
        self, impl: Any, kind: str, hook_name: str, registries: dict[str, Registry]
    ) -> None:
        """Run one plugin's `register_*` hook. A third-party hook that raises, or registers a
        name already taken (by metaemb or an earlier plugin) or a malformed component, is
        reported with the plugin's name and its registrations of that kind are dropped, so the
        rest of metaemb keeps working (fatal with METAEMB_STRICT_PLUGINS=1). A mistake in
        metaemb's own plugins always stops."""
        plugin_name = self.pm.get_name(impl.plugin) or "?"
        added: list[str] = []
        tried: list[str] = []

        def register(name: str, factory: Any, **info: Any) -> None:
            tried.append(name)
            registries[kind].add(name, factory, plugin_name, **info)
            added.append(name)

        try:
            impl.function(register=register)
        except Exception as exc:  # isolate any failure of a third-party plugin
            if isinstance(exc, PluginError) and self.is_own(impl.plugin):
                raise
            if isinstance(exc, PluginError):  # a registration mistake, worded by the registry
                cause = message = str(exc).rstrip(".")
            else:
                cause = f"its {hook_name} hook raised {type(exc).__name__}: {exc}"
                message = f"plugin '{plugin_name}' failed: {cause}"
            if strict_mode():
                raise PluginError(message) from exc
            why = f"plugin '{plugin_name}' registers it but was skipped: {cause}"
            registries[kind].discard(added)
            for name in tried:  # asking for one later says why it is missing
                if isinstance(name, str):
                    registries[kind].drop_note(name, why)
            registries[kind].failed_plugins[plugin_name] = cause  # and its names never tried
            self.failed.append(FailedPlugin(plugin_name, cause, skipped=kind))
            warnings.warn(
                f"{message}; its {kind} are skipped (set METAEMB_STRICT_PLUGINS=1 to make "
                f"this fatal, or METAEMB_DISABLE_PLUGINS={plugin_name} to silence it)",
                stacklevel=2,
            )

    @staticmethod
    def is_own(plugin: object) -> bool:
        """metaemb's own plugins (the core's and the built-in modules under metaemb.plugins)."""
        return getattr(plugin, "__name__", "").startswith("metaemb.")

    def plugins(self) -> list[PluginInfo]:
        infos: dict[str, PluginInfo] = {}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            module = getattr(plugin, "__name__", type(plugin).__name__)
            infos[name] = PluginInfo(name, self.versions.get(name, "unknown"), module, hooks)
        for kind, registry in self.registries().items():
            for entry in registry.entries():
                if entry.plugin in infos:
                    infos[entry.plugin].components.setdefault(kind, []).append(entry.name)
        for plugin, names in self.commands.items():  # commands are not components: no registry
            if plugin in infos and names:
                infos[plugin].components["commands"] = sorted(names)
        return sorted(infos.values(), key=lambda p: (p.name != "core", p.name))


_state: PluginState | None = None
_lock = threading.Lock()


def strict_mode() -> bool:
    from metaemb.core.env import env_flag

    return env_flag("METAEMB_STRICT_PLUGINS", refuse=False)


def _dist_name(ep: metadata.EntryPoint | None) -> str:
    """The distribution that declares entry point `ep` ("" when unknown)."""
    dist = getattr(ep, "dist", None)
    return str(getattr(dist, "name", "") or "").lower().replace("_", "-")


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def disabled_plugins() -> set[str]:
    return {
        n.strip() for n in os.environ.get("METAEMB_DISABLE_PLUGINS", "").split(",") if n.strip()
    }


def state() -> PluginState:
    """The process-wide plugin state, loaded on first use."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                new = PluginState()
                new.load()
                _state = new
    return _state


def get_plugin_manager() -> pluggy.PluginManager:
    return state().pm


def registry(kind: str) -> Registry:
    """The registry of one component kind, e.g. registry("backbones")."""
    registries = state().registries()
    if kind not in registries:
        raise PluginError(
            f"unknown component kind '{kind}'; kinds: {', '.join(sorted(registries))}"
        )
    return registries[kind]


def kinds() -> dict[str, str]:
    """Every component kind → its hook name: the core's and those plugins declare."""
    return dict(state().kinds)


def get(kind: str, name: str) -> Any:
    """The factory registered under `name` in `kind`, with a helpful error when unknown."""
    return registry(kind).get(name)


def reset() -> None:
    """Forget all loaded plugins (tests use this; the next call reloads)."""
    global _state
    with _lock:
        _state = None


@contextlib.contextmanager
def plugin_registered(plugin: object, name: str) -> Iterator[None]:
    """Register an in-process plugin object for the duration of a `with` block (for tests)."""
    st = state()
    st.pm.register(plugin, name=name)
    st.add_plugin_hookspecs(plugin)
    st.versions[name] = "in-process"
    st.invalidate()
    try:
        st.check_hook_names(strict_mode())
        st.check_implements_something(name, plugin, strict_mode())  # as for an installed one
        yield
    finally:
        st.pm.unregister(name=name)
        st.versions.pop(name, None)
        st.invalidate()
