"""Everything a Config builds before training or evaluation: data root, sample folder,
frontend, features and the embedding model (shared by train, evaluate and embed)."""

from __future__ import annotations

import contextvars
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from metaemb.core.config import Config
from metaemb.core.data.dataset import PreparedDataset
from metaemb.core.errors import ConfigError, OutputError, PluginError
from metaemb.core.paths import data_path_exists, default_cache_dir, ensure_writable_dir
from metaemb.core.plugin.components import build
from metaemb.core.plugin.interfaces import SampleFolder
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.options import options_of
from metaemb.core.train.model import EmbeddingModel


def cache_dir(config: Config) -> Path:
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return default_cache_dir()


def data_root(config: Config, console: Console | None = None) -> Path:
    """The data folder: --data, or the modality's demo dataset generated once into the cache.

    The cache folder is keyed by every generator option (defaults included), so changing the
    generator's defaults or the config's demo.* options never reuses stale data; the generators
    themselves are idempotent and write atomically.
    """
    if config.data.root:
        root = Path(config.data.root)
        trained = Path(config.data.root_absolute) if config.data.root_absolute else None
        if not root.is_absolute() and trained is not None and data_path_exists(trained):
            return trained  # the folder the run trained on, from any working directory
        return root
    mod = config.modality_obj()
    if not mod.demo_data:
        raise ConfigError(
            f"modality '{mod.name}' has no built-in demo dataset; pass --data DIR (a folder of "
            "<identity>/<sample> files)."
        )
    generator = registry("demo_data").get(mod.demo_data)
    opts = {k: o.default for k, o in options_of(generator).items()}
    opts.update(config.options("demo"))
    if getattr(generator, "version", None) is not None:  # a new generator gets a new folder
        opts["generator_version"] = generator.version
    key = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    out = cache_dir(config) / "demo" / f"{mod.demo_data}-{key}"
    if not out.exists():
        try:
            ensure_writable_dir(out.parent, "metaemb cache folder")
        except OutputError as exc:
            raise OutputError(
                f"{exc} It holds the generated demo data: set METAEMB_CACHE (or --set "
                "data.cache_dir=DIR) to a writable folder, or train on your own data with --data."
            ) from None
    if console is not None and not out.exists():
        console.print(
            f"Generating the built-in {mod.name} demo dataset into {out} (once) …", markup=False
        )
    return generate_demo(mod.demo_data, config.options("demo"), out)


def generate_demo(name: str, options: dict[str, Any], out: Path, seed: int | None = None) -> Path:
    """Run demo-data factory `name` into `out` (with `seed`, another draw of the dataset, for a
    factory that takes one), then check it wrote there: a factory that returns without writing,
    or writes elsewhere, is named instead of reported as done."""
    from metaemb.core.plugin.options import _accepts

    entry = registry("demo_data").entry(name)
    who = f"demo-data factory '{name}' (plugin '{entry.plugin}')"
    context: dict[str, Any] = {"out": out}
    if seed is not None:
        if "seed" not in _accepts(entry.factory):
            from metaemb.core.plugin.options import options_of

            own = [n for n in options_of(entry.factory) if "seed" in n]
            how = (f"its option '{own[0]}' draws another dataset: --set {own[0]}={seed}" if own
                   else "it draws one dataset")  # fmt: skip
            raise ConfigError(f"{who} has no parameter 'seed' for --seed; {how}.")
        context["seed"] = seed
    out.parent.mkdir(parents=True, exist_ok=True)  # a generator may write a sibling, then rename
    _remove_orphan_siblings(out)
    returned = build("demo_data", name, options, **context)
    if isinstance(returned, (str, Path)) and Path(returned).resolve() != out.resolve():
        raise PluginError(
            f"{who} wrote to '{returned}', not to the folder it was given ('{out}'); a factory "
            "must write its dataset into `out` (and may return it)."
        )
    if not out.is_dir() or not any(out.iterdir()):
        raise PluginError(
            f"{who} returned without writing anything into '{out}'; it must write an "
            "<identity>/<sample> folder there."
        )
    return out


def _remove_orphan_siblings(out: Path) -> None:
    """The temporary siblings `.<name>.tmp-<pid>…` that generators killed mid-way left beside
    `out` (a speaker demo set is gigabytes): removed when their process is gone and nothing in
    them changed for ten minutes (its writer may be another machine sharing the cache)."""
    import re
    import shutil
    import time

    from metaemb.core.files import process_alive

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.tmp-(\d+)(?:-.*)?$")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        m = pattern.match(sibling.name)
        if not m or not sibling.is_dir() or sibling.is_symlink() or process_alive(int(m.group(1))):
            continue
        try:
            changed = max(p.stat().st_mtime for p in [sibling, *sibling.rglob("*")])
        except OSError:
            continue
        if time.time() - changed > 600:
            shutil.rmtree(sibling, ignore_errors=True)


#: `--frontend-set KEY=VALUE` of a command that uses a trained run (set per command)
_FRONTEND_SET: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "frontend_set", default=()
)


def use_frontend_set(items: list[str] | None) -> None:
    """`--frontend-set` of evaluate, embed, enroll and identify: options of the run's frontend
    that say where the data's side information is or what to do without it (its
    `access_options`: a landmark file, a no-face policy), applied to every frontend built for
    the run in this command. The CLI resets it for each command."""
    from metaemb.core.config.toml_io import parse_set

    given = [parse_set(i, "--frontend-set", "on_no_face=center") for i in items or ()]
    _FRONTEND_SET.set(tuple(dict(given).items()))


_FOLDER_SET: contextvars.ContextVar[tuple[str | None, tuple[tuple[str, Any], ...]]] = (
    contextvars.ContextVar("folder_set", default=(None, ()))
)


def use_folder_set(folder: str | None, items: list[str] | None) -> None:
    """`--folder NAME` and `--folder-set KEY=VALUE` of embed, enroll, identify and neighbours:
    the run's data read with another sample folder, or with other options of the run's (which
    files it holds: a re-identification folder's query and gallery, kept out of training), for
    every data folder loaded for the run in this command. The CLI resets it for each command."""
    from metaemb.core.config.toml_io import parse_set

    given = [parse_set(i, "--folder-set", "parts=query") for i in items or ()]
    _FOLDER_SET.set((folder, tuple(dict(given).items())))


_FEATURES_SET: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "features_set", default=()
)


def use_features_set(items: list[str] | None) -> None:
    """`--features-set KEY=VALUE` of the commands that use a trained run: options of the run's
    features that change only how evaluation embeds (its `test_options`, e.g. a flip test),
    applied to every model loaded in this command. The CLI resets it for each command."""
    from metaemb.core.config.toml_io import parse_set

    given = [parse_set(i, "--features-set", "test_flip=true") for i in items or ()]
    _FEATURES_SET.set(tuple(dict(given).items()))


def features_set_used(config: Config | None = None) -> dict[str, Any]:
    """The command's --features-set, for its outputs to record ({} when none); with the run's
    `config`, only the values that differ from the run's own (a no-op set names nothing)."""
    given = dict(_FEATURES_SET.get())
    if config is None or not given:
        return given
    from metaemb.core.plugin.components import validate_options

    own = config.options("features")
    name = config.model.features
    typed = validate_options("features", name, given, "features")
    defaults = {k: o.default for k, o in options_of(registry("features").get(name)).items()}
    return {k: v for k, v in typed.items() if own.get(k, defaults.get(k)) != v}


def test_options_record(model: Any) -> dict[str, Any]:
    """`{"test_options": {...}}`: the features' test options in effect (a flip test, whether set by
    --features-set or by the run's training configuration), for a result to record; {} when
    every one is at its default."""
    from metaemb.core.deploy.stamp import test_options_in_effect

    features = getattr(model, "features", None)
    views = test_options_in_effect(features) if features is not None else {}
    return {"test_options": views} if views else {}


def apply_features_set(features: Any, name: str) -> None:
    """Set the command's --features-set on a loaded model's features `name` (checked against
    the options its class lets change after training)."""
    from metaemb.core.plugin.components import validate_options

    given = dict(_FEATURES_SET.get())
    if not given:
        return
    allowed = set(getattr(type(features), "test_options", ()) or ())
    refused = sorted(set(given) - allowed)
    if refused:
        raise ConfigError(
            f"--features-set {refused[0]}: the run's features '{name}' let "
            f"{', '.join(sorted(allowed)) or 'no option'} be set after training; the others "
            "change what the model was trained on (features list those it lets change in "
            "their `test_options`)."
        )
    for key, value in validate_options("features", name, given, "features").items():
        setattr(features, key, value)


def folder_set_used() -> tuple[str | None, dict[str, Any]]:
    """The command's (--folder, --folder-set), for load_run ((None, {}) when none)."""
    folder, items = _FOLDER_SET.get()
    return folder, dict(items)


def frontend_set_used() -> dict[str, Any]:
    """The command's --frontend-set, for its outputs to record ({} when none)."""
    return {k: str(v) if isinstance(v, str) else v for k, v in _FRONTEND_SET.get()}


def _frontend_options(config: Config) -> dict[str, Any]:
    from metaemb.core.plugin.components import validate_options

    opts = config.options("frontend")
    given = dict(_FRONTEND_SET.get())
    if not given:
        return opts
    name = config.model.frontend
    allowed = set(getattr(registry("frontends").get(name), "access_options", ()) or ())
    refused = sorted(set(given) - allowed)
    if refused:
        raise ConfigError(
            f"--frontend-set {refused[0]}: the run's frontend '{name}' lets "
            f"{', '.join(sorted(allowed)) or 'no option'} be set after training; the others "
            "change what the model sees and belong to the training configuration (a frontend "
            "lists those it lets change in its `access_options`)."
        )
    return {**opts, **validate_options("frontends", name, given, "--frontend-set")}


def build_frontend(config: Config, root: Path) -> Any:
    """The config's frontend for the data under `root`, caching in the config's cache folder
    (with the command's `--frontend-set`, when it gives one)."""
    return build(
        "frontends",
        config.model.frontend,
        _frontend_options(config),
        root=root,
        cache_dir=cache_dir(config),
    )


@dataclass
class Components:
    """Everything built from a Config: data, pipeline and network (what evaluate also needs)."""

    config: Config
    root: Path
    folder: SampleFolder
    frontend: Any
    features: Any
    model: EmbeddingModel

    @classmethod
    def build(cls, config: Config, root: Path) -> Components:
        folder = build(
            "sample_folders",
            config.data.folder,
            config.options("folder"),
            root=root,
            cache_dir=cache_dir(config),  # for folders that keep an index (tar shards)
        )
        frontend = build_frontend(config, root)
        model = build_model(config)
        return cls(config, root, folder, frontend, model.features, model)

    def dataset(self, folder: SampleFolder, train: bool) -> PreparedDataset:
        return PreparedDataset(
            folder, self.frontend, self.features, train, self.config.data.on_bad_sample
        )


def build_model(config: Config) -> EmbeddingModel:
    """Features → backbone → head from a resolved config, without touching any data folder."""
    features = build("features", config.model.features, config.options("features"))
    _declared_size(features, "out_channels", "features", config.model.features)
    backbone = build(
        "backbones",
        config.model.backbone,
        config.options("backbone"),
        in_channels=features.out_channels,
    )
    _declared_size(backbone, "feature_dim", "backbones", config.model.backbone)
    head = build(
        "heads",
        config.model.head,
        config.options("head"),
        in_features=backbone.feature_dim,
        dim=config.model.dim,
    )
    return EmbeddingModel(features, backbone, head)


def _declared_size(component: Any, attr: str, kind: str, name: str) -> None:
    """A size the next component is built from must be declared (a positive int)."""
    value = getattr(component, attr, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        reg = registry(kind)
        what = {
            "out_channels": "the width of its output (3 for RGB, 80 for 80 filterbank bands)",
            "feature_dim": "the size of its pooled output [batch, feature_dim]",
        }[attr]
        raise ConfigError(
            f"{reg.singular} '{name}' (plugin '{reg.entry(name).plugin}') has {attr} = "
            f"{value!r}; set it to {what}."
        )
