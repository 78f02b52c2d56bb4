"""Commands that plugins add (hook `register_commands`), one plugin at a time, so that a command
name a built-in command (or an earlier plugin) already has is refused by name instead of
silently replacing `metaemb train` and the rest: typer keeps the last command of a name."""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import typer
from typer.main import get_command_name, solve_typer_info_defaults

from metaemb.core.errors import MetaembError, PluginError
from metaemb.core.plugin.manager import state, strict_mode


def command_names(info: Any) -> list[str]:
    """The names a registered command or sub-app adds to the command line (a sub-app added
    without a name adds its commands' names)."""
    if isinstance(info, typer.models.CommandInfo):
        callback = getattr(info.callback, "__name__", "")
        return [info.name or get_command_name(callback)] if info.name or callback else []
    name = solve_typer_info_defaults(info).name
    if name:
        return [name]
    inner = info.typer_instance
    return [n for i in (*inner.registered_commands, *inner.registered_groups)
            for n in command_names(i)] if inner else []  # fmt: skip


def _taken(app: typer.Typer) -> dict[str, str]:
    """Every command name the app has so far → 'core' (built-in commands are not plugins')."""
    infos = (*app.registered_commands, *app.registered_groups)
    return {name: "core" for info in infos for name in command_names(info)}


def add_plugin_commands(app: typer.Typer) -> None:
    """Run each plugin's `register_commands(app)` in turn (metaemb's own plugins first, then
    the others by entry-point name) and drop each command whose name is taken, with a warning
    naming the plugin and the command; the plugin's other commands are kept. Fatal under
    METAEMB_STRICT_PLUGINS=1, as a duplicate component name is."""
    st = state()
    st.commands = {}  # what this app's plugins add (an app is built once per command line)
    owners = _taken(app)
    impls = st.pm.hook.register_commands.get_hookimpls()  # registration order
    impls.sort(key=lambda impl: not st.is_own(impl.plugin))
    for impl in impls:
        plugin = st.pm.get_name(impl.plugin) or "?"
        commands, groups = len(app.registered_commands), len(app.registered_groups)
        impl.function(app=app)
        for infos, start in ((app.registered_commands, commands), (app.registered_groups, groups)):
            for info in list(infos[start:]):
                clash = [n for n in command_names(info) if n in owners]
                if clash:
                    infos.remove(info)
                    _refuse(plugin, clash[0], owners[clash[0]])
                    continue
                owners.update(dict.fromkeys(command_names(info), plugin))
                st.commands.setdefault(plugin, []).extend(command_names(info))
                if not st.is_own(impl.plugin):
                    _guard(info, plugin)


def _guard(info: Any, plugin: str) -> None:
    """Wrap the callbacks of a plugin's command (or of every command of its sub-app) so that
    an exception of its own is one message naming the plugin, not a traceback of metaemb."""
    if isinstance(info, typer.models.CommandInfo):
        if info.callback is not None:
            info.callback = _guarded(info.callback, plugin, command_names(info)[0])
        return
    inner = info.typer_instance
    for sub in (*inner.registered_commands, *inner.registered_groups) if inner else ():
        _guard(sub, plugin)


def _guarded(fn: Callable[..., Any], plugin: str, name: str) -> Callable[..., Any]:
    passthrough: tuple[type[BaseException], ...] = (MetaembError, typer.Exit, typer.Abort)
    for module, names in (("typer.exceptions", ("TyperException",)),
                          ("click.exceptions", ("ClickException", "Exit", "Abort"))):  # fmt: skip
        with contextlib.suppress(ImportError):  # typer ≥ 0.2x has its own, older ones click's
            found = importlib.import_module(module)
            passthrough += tuple(getattr(found, n) for n in names if hasattr(found, n))

    @functools.wraps(fn)  # typer reads the wrapped function's parameters
    def run(*args: Any, **kwargs: Any) -> Any:
        from metaemb.core.env import env_flag

        try:
            return fn(*args, **kwargs)
        except passthrough:
            raise
        except Exception as exc:
            if env_flag("METAEMB_DEBUG", refuse=False):
                raise
            raise PluginError(
                f"plugin '{plugin}' failed in its command '{name}': {type(exc).__name__}: {exc}. "
                "This is a bug of the plugin, not of your input: report it to its authors "
                "(METAEMB_DEBUG=1 shows the traceback)."
            ) from exc

    return run


def _refuse(plugin: str, name: str, owner: str) -> None:
    """Say that `plugin`'s command `name` is dropped because `owner` has the name."""
    whose = "metaemb's built-in command" if owner == "core" else f"plugin '{owner}'"
    message = (f"plugin '{plugin}' registers command '{name}', a name {whose} already has; "
               f"the plugin's command is dropped and `metaemb {name}` is unchanged (rename "
               "it)")  # fmt: skip
    if strict_mode():
        raise PluginError(message + ".")
    warnings.warn(message + " (set METAEMB_STRICT_PLUGINS=1 to make this fatal).", stacklevel=2)
