"""Named component registries filled by plugins through the `register_*` hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaemb.core.errors import PluginError, UnknownComponentError, suggest

KINDS: dict[str, str] = {
    # kind (plural, as in `metaemb list KIND`) -> hook name
    "sample_folders": "register_sample_folders",
    "frontends": "register_frontends",
    "features": "register_features",
    "augmentations": "register_augmentations",
    "backbones": "register_backbones",
    "heads": "register_heads",
    "objectives": "register_objectives",
    "samplers": "register_samplers",
    "scorers": "register_scorers",
    "modalities": "register_modalities",
    "protocols": "register_protocols",
    "demo_data": "register_demo_data",
    "trial_formats": "register_trial_formats",
    "export_adapters": "register_export_adapters",
}


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory, owning plugin and free-form info."""

    name: str
    factory: Any
    plugin: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        own = getattr(self.factory, "description", None)  # e.g. a Modality's own text
        doc = self.info.get("description") or (own if isinstance(own, str) and own else None)
        doc = doc or getattr(self.factory, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Components of one kind, by name; refuses duplicates and suggests on unknown names."""

    def __init__(
        self,
        kind: str,
        disabled_plugins: list[str] | None = None,
        unloaded_plugins: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.disabled_plugins = list(disabled_plugins or [])  # installed, blocked by the user
        self.unloaded_plugins = dict(unloaded_plugins or {})  # installed, failed to import: why
        self._entries: dict[str, Entry] = {}
        self._dropped: dict[str, str] = {}  # name → why (its plugin's hook failed)
        self.failed_plugins: dict[str, str] = {}  # plugin → why its hook of this kind failed

    @property
    def singular(self) -> str:
        return {
            "sample_folders": "sample folder",
            "demo_data": "demo dataset",
            "modalities": "modality",
            "features": "features",
        }.get(self.kind, self.kind.rstrip("s").replace("_", " "))

    def add(self, name: str, factory: Any, plugin: str, **info: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {self.singular} without a name")
        if name in self._entries:
            other = self._entries[name].plugin
            if other == plugin:
                raise PluginError(
                    f"plugin '{plugin}' registers {self.singular} '{name}' twice; "
                    "each name must be registered once."
                )
            raise PluginError(
                f"plugin '{plugin}' registers {self.singular} '{name}', a name plugin '{other}' "
                f"already registered; rename it"
            )
        if self.kind == "modalities":
            from metaemb.core.plugin.modality import Modality

            if not isinstance(factory, Modality):
                raise PluginError(
                    f"plugin '{plugin}' registered modality '{name}' as "
                    f"{type(factory).__name__} {factory!r:.60}; register a Modality(...) "
                    "instance: register(name, Modality(name=..., description=..., ...))."
                )
        if self.kind != "modalities":
            _check_factory(self.kind, f"{self.singular} '{name}'", factory, plugin)
        if self.kind == "sample_folders":
            _check_sample_folder(name, factory, plugin, info)
        if self.kind == "demo_data":
            _check_demo_version(name, factory, plugin)
        if self.kind != "modalities":
            what = f"{self.singular} '{name}'"
            options = _options(factory)
            _check_option_defaults(what, options, plugin)
            _check_declared_options(what, factory, plugin, info, options)
            if self.kind == "features":
                _check_test_options(what, factory, plugin, options)
            _warn_unreachable_context(self.kind, what, factory, plugin)
        self._entries[name] = Entry(name, factory, plugin, dict(info))

    def discard(self, names: list[str]) -> None:
        """Forget entries (those of a plugin whose hook failed half-way)."""
        for name in names:
            self._entries.pop(name, None)

    def drop_note(self, name: str, why: str) -> None:
        """Remember that a failed plugin meant to register `name` (named when it is asked for)."""
        if name not in self._entries:
            self._dropped.setdefault(name, why)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            if name in self._dropped:
                raise UnknownComponentError(
                    f"{self.singular} '{name}' is not available: {self._dropped[name]} "
                    "(`metaemb plugins` lists failed plugins)."
                ) from None
            available = ", ".join(sorted(self._entries)) or "(none)"
            failed = "".join(
                f" Plugin '{plugin}' failed registering {self.kind} ({why}), so any it would "
                "have registered after that are missing too."
                for plugin, why in self.failed_plugins.items()
            )
            failed += "".join(
                f" Plugin '{plugin}' failed to load ({why}); the {self.singular} may be theirs."
                for plugin, why in self.unloaded_plugins.items()
            )
            if self.disabled_plugins:
                names = ", ".join(f"'{p}'" for p in self.disabled_plugins)
                failed += (f" Installed but disabled by METAEMB_DISABLE_PLUGINS: {names}; the "
                           f"{self.singular} may be theirs.")  # fmt: skip
            raise UnknownComponentError(
                f"unknown {self.singular} '{name}';{suggest(name, self._entries)} "
                f"available: {available}. (`metaemb list {self.kind}` shows them with their "
                f"plugins.){failed}"
            ) from None

    def get(self, name: str) -> Any:
        return self.entry(name).factory

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _check_sample_folder(name: str, factory: Any, plugin: str, info: dict[str, Any]) -> None:
    """`what` names one sample in every message about the folder's files, and `extensions`
    is a tuple of suffixes: a plain string would be read letter by letter."""
    exts = getattr(factory, "extensions", ())
    if not isinstance(exts, (tuple, list, set, frozenset)) or not all(
        isinstance(e, str) and e.startswith(".") and len(e) > 1 for e in exts
    ):
        raise PluginError(
            f"plugin '{plugin}' registered sample folder '{name}' with extensions={exts!r}; "
            'give a tuple of suffixes with their dot, e.g. extensions = (".npy",).'
        )
    what = getattr(factory, "what", "sample")
    if not isinstance(what, str) or not what.strip():
        raise PluginError(
            f"plugin '{plugin}' registered sample folder '{name}' with what={what!r}; `what` is "
            'the word for one sample in messages ("recording", "picture").'
        )


def _check_demo_version(name: str, factory: Any, plugin: str) -> None:
    """A demo generator's `version` is part of its cache key: without one, data generated by
    an older version of the generator is reused after it changed, without a word."""
    import warnings

    version = getattr(factory, "version", None)
    if type(version) is not int:
        warnings.warn(
            f"plugin '{plugin}' registers demo dataset '{name}' with version={version!r}; set "
            f"`{getattr(factory, '__name__', 'factory')}.version = 1` (an int, bumped whenever its "
            "output changes), or cached demo data of an older generator is reused.",
            stacklevel=3,
        )


def _options(factory: Any) -> dict[str, Any]:
    """The factory's options, read once for every registration check ({} when it has no
    inspectable signature: nothing to check)."""
    from metaemb.core.plugin.options import options_of

    try:
        return options_of(factory)
    except (TypeError, ValueError):
        return {}


def _check_option_defaults(what: str, options: dict[str, Any], plugin: str) -> None:
    """Each option's default must be a value of its own annotation: `size: int = "64"` would
    pass every run a string that no --set could give (a user's "64" is refused)."""
    from metaemb.core.errors import ConfigError
    from metaemb.core.plugin.options import _EMPTY, coerce

    for key, option in options.items():
        if option.default is _EMPTY or option.default is None:
            continue
        try:
            coerce(option.default, option.type, f"option '{key}'")
        except ConfigError as exc:
            raise PluginError(
                f"plugin '{plugin}' registers {what} whose option '{key}' defaults to "
                f"{option.default!r}, which is not a value of its own annotation ({exc}); make "
                "the default match the type hint."
            ) from None


def _check_declared_options(
    what: str, factory: Any, plugin: str, info: dict[str, Any], options: dict[str, Any]
) -> None:
    """A `yields`/`accepts` declaration must be Kinds, and each `Opt("name")` in it must name
    an option of the component: a misspelt one would bind to None and switch its check off."""
    from metaemb.core.plugin.contract import Kind, Opt, declaration

    for attr in ("yields", "accepts"):
        value = declaration(factory, info, attr)
        if value is None or (callable(value) and not isinstance(value, Kind)):
            continue  # undeclared, or computed from the options (a callable)
        kinds = (value,) if isinstance(value, Kind) else value
        if not isinstance(kinds, (tuple, list)) or not all(isinstance(k, Kind) for k in kinds):
            raise PluginError(
                f"plugin '{plugin}' registers {what} declaring {attr}={value!r:.60}; declare "
                f'a Kind, e.g. {attr} = Kind("feature-matrix"), or a tuple of Kinds '
                "(from metaemb.core.plugin.contract import Kind)."
            )
        for kind in kinds:
            for param, opt in getattr(kind, "params", ()):
                if isinstance(opt, Opt) and not _names_option(options, opt.name):
                    raise PluginError(
                        f"plugin '{plugin}' registers {what} whose {attr} takes {param} from "
                        f"Opt({opt.name!r}), which is not one of its options;"
                        f"{suggest(opt.name.split('.')[0], options)} options: "
                        f"{', '.join(sorted(options)) or '(none)'}."
                    )


def _check_test_options(what: str, factory: Any, plugin: str, options: dict[str, Any]) -> None:
    """`test_options` and `view_options` must name options of the features (a misspelt entry
    made `--features-set` refuse the option it meant); a view option without a `hash_neutral`
    default gives every run trained before it another folder: said once, at registration."""
    import warnings

    tests = tuple(getattr(factory, "test_options", ()) or ())
    views = getattr(factory, "view_options", None)
    for attr, names in (("test_options", tests), ("view_options", tuple(views or ()))):
        unknown = [n for n in names if n not in options]
        if unknown:
            raise PluginError(
                f"plugin '{plugin}' registers {what} whose {attr} names {unknown[0]!r}, which "
                f"is not one of its options;{suggest(unknown[0], options)} options: "
                f"{', '.join(sorted(options)) or '(none)'}."
            )
    neutral = getattr(factory, "hash_neutral", None) or {}
    missing = [n for n in (tests if views is None else views) if n not in neutral]
    if missing:
        warnings.warn(
            f"plugin '{plugin}' registers {what} whose view option {missing[0]!r} has no "
            "hash_neutral default: every run trained before it gets another run folder (list "
            f'it in hash_neutral = {{"{missing[0]}": <the value that keeps the old behaviour>}}).',
            stacklevel=3,
        )


#: the base class each kind's classes subclass (docs/plugins.md); a class of another kind's
#: base registered here is a mix-up, named when the plugin registers
_BASES = {
    "frontends": "Frontend", "features": "Features", "augmentations": "Augmentation",
    "backbones": "Backbone", "heads": "Head", "objectives": "Objective",
    "samplers": "BatchSampler", "scorers": "Scorer", "sample_folders": "SampleFolder",
}  # fmt: skip
#: class attributes with a fixed set of values, checked when the plugin registers
_CHOICES = {
    ("objectives", "needs"): ("point", "gme", "any"),
    ("heads", "output"): ("point", "gme"),
    ("augmentations", "stage"): ("input", "features"),
}


def _check_factory(kind: str, what: str, factory: Any, plugin: str) -> None:
    """A factory is a class or a function; a class of another kind (a Backbone registered as
    an objective) or a misspelt `needs`/`stage`/`output` is refused here, where the plugin and
    the name are known, not as a puzzling mismatch or a traceback at train time."""
    import inspect

    from metaemb.core.plugin import interfaces

    if not callable(factory):
        raise PluginError(
            f"plugin '{plugin}' registers {what} with {factory!r:.60} (a "
            f"{type(factory).__name__}), which is not a class or a function; register the "
            "class itself (or a function that builds one)."
        )
    bases = {k: getattr(interfaces, b) for k, b in _BASES.items()}
    if not inspect.isclass(factory):
        import torch

        if isinstance(factory, (torch.nn.Module, *bases.values())):  # callable, yet built
            cls = type(factory).__name__
            raise PluginError(
                f"plugin '{plugin}' registers {what} as an instance of {cls}; register the "
                f"class ({cls}) or a function that builds one: metaemb builds it with the "
                "run's options."
            )
        return
    own = _BASES.get(kind)
    if own is not None and not issubclass(factory, bases[kind]):
        other = next((b for k, b in _BASES.items() if issubclass(factory, bases[k])), None)
        if other is not None:
            raise PluginError(
                f"plugin '{plugin}' registers {what} with class {factory.__name__}, a {other}; "
                f"{kind.replace('_', ' ')} subclass metaemb's {own} (register it with the hook "
                "of its own kind)."
            )
    for (choice_kind, attr), allowed in _CHOICES.items():
        value = getattr(factory, attr, None)
        if choice_kind == kind and isinstance(value, str) and value not in allowed:
            raise PluginError(
                f"plugin '{plugin}' registers {what} whose {attr} is {value!r}; it is one of "
                f"{', '.join(repr(a) for a in allowed)}.{suggest(value, list(allowed))}"
            )


def _names_option(options: dict[str, Any], dotted: str) -> bool:
    """Whether `dotted` ("sample_rate", "filters.sample_rate") names an option (or a key of a
    table option's default)."""
    head, _, rest = dotted.partition(".")
    if head not in options:
        return False
    value = options[head].default
    for part in rest.split(".") if rest else ():
        if not isinstance(value, dict):
            return True  # a table whose keys the default does not show
        if part not in value:
            return False
        value = value[part]
    return True


#: the reserved names metaemb passes to components of these kinds (a parameter named after
#: another reserved name is never given a value, and is no option either)
CONTEXT_BY_KIND: dict[str, frozenset[str]] = {
    "features": frozenset(),
    "augmentations": frozenset(),
    "backbones": frozenset({"in_channels"}),
    "heads": frozenset({"in_features", "dim"}),
    "objectives": frozenset(),
    "scorers": frozenset(),  # built from their options alone
}


def _warn_unreachable_context(kind: str, what: str, factory: Any, plugin: str) -> None:
    """A backbone's `dim` (the author's output size) keeps its default for ever: `dim` is a
    reserved name that metaemb passes to heads only, and no user may set it. Say so when the
    plugin registers, not after a run trained at the wrong size."""
    import warnings

    from metaemb.core.plugin.options import CONTEXT_NAMES, _accepts

    given = CONTEXT_BY_KIND.get(kind)
    if given is None or getattr(factory, "__module__", "").startswith("metaemb."):
        return  # metaemb's own components: a reserved parameter there is deliberate (a seed)
    try:
        unreachable = sorted((_accepts(factory) & CONTEXT_NAMES) - given)
    except (TypeError, ValueError):
        return
    for name in unreachable:
        passed = ", ".join(sorted(given)) or "none of them"
        warnings.warn(
            f"plugin '{plugin}' registers {what} with a parameter '{name}', a name metaemb "
            f"reserves for what it passes to components itself ({kind} get {passed}): it "
            f"always keeps its default and cannot be set. Rename it (e.g. 'out_{name}') to "
            "make it an option.",
            stacklevel=2,
        )
