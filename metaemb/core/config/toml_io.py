"""Reading and writing config TOML: files (UTF-8, named in every error), `--set key=value`
items, and the small writer that saves a resolved config as its run's config.toml."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metaemb.core.errors import ConfigError
from metaemb.core.plugin.options import Unquoted

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["dumps_toml", "load_toml", "parse_set", "tomllib"]


def parse_set(item: str, flag: str = "--set", example: str = "train.epochs=3") -> tuple[str, Any]:
    """'train.epochs=3' → ('train.epochs', 3); values parse as TOML literals, else as text
    (`Unquoted`, which may still read as a number: "0.01,0.05" for a list of floats). `flag`
    and `example` name the option the item came from in the error."""
    if "=" not in item:
        raise ConfigError(f"{flag} expects key=value (e.g. {example}), got '{item}'")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = Unquoted(raw)
    return key, value


#: what pipes (`--config <(…)`, /dev/stdin) gave: they can be read only once per process
_PIPED: dict[str, bytes] = {}


def _read(p: Path) -> bytes:
    from metaemb.core.errors import MetaembError
    from metaemb.core.files import MiB, read_bounded

    try:
        if p.is_file():
            return read_bounded(p, "config file", 16 * MiB)
        if str(p) not in _PIPED:  # `--config <(…)`: a pipe is read once, and kept
            _PIPED[str(p)] = read_bounded(p, "config file", 16 * MiB, pipes=True)
    except MetaembError as exc:
        raise ConfigError(str(exc)) from None
    return _PIPED[str(p)]


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file '{p}' is a folder; give the .toml file.")
    if not p.exists() and str(p) not in _PIPED:
        raise ConfigError(f"config file '{p}' does not exist.")
    try:
        text = _read(p).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{p}' is not UTF-8 text (byte {exc.start}); TOML files must be UTF-8. "
            "Re-save it as UTF-8."
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file '{p}' cannot be read: {exc.strerror or exc}.") from None
    text = text.removeprefix("\ufeff")  # the byte-order mark some Windows editors write
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        other = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}.get(Path(p).suffix.lower())
        if other:
            raise ConfigError(
                f"config file '{p}' is {other} by its name; metaemb reads TOML config files "
                "(examples/configs/ has some to start from)."
            ) from None
        raise ConfigError(f"config file '{p}' is not valid TOML: {exc}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: dict[str, Any]) -> str:
    """A minimal TOML writer for configs: top-level scalars, then one table per section, then
    its nested tables ([scorer.base], [augment.noise])."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    _tables(d, "", lines)
    return "\n".join(lines) + "\n"


def _tables(d: dict[str, Any], prefix: str, lines: list[str]) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{prefix}{k}]")
            lines.extend(
                f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if not isinstance(vv, dict)
            )
            _tables(v, f"{prefix}{k}.", lines)


#: options of a component for one command: {key: value} from Python, or the command line's
#: ["KEY=VALUE", …] (`--folder-set`, `--scorer-set`, `--protocol-set`)
Options = Mapping[str, Any] | Sequence[str] | None


def option_table(given: Options, flag: str, argument: str) -> dict[str, Any]:
    """`given` as {key: value}: a dict as it is, "KEY=VALUE" strings parsed as `flag` parses
    them; one bare string (iterated letter by letter otherwise) is refused."""
    if given is None:
        return {}
    if isinstance(given, Mapping):
        return dict(given)
    if isinstance(given, str):
        raise ConfigError(
            f"{argument} takes {{key: value}} or a list of 'KEY=VALUE' strings, not one string "
            f"({given!r}): write {argument}=[{given!r}]."
        )
    items = [parse_set(s, flag) for s in given]
    table = dict(items)
    twice = sorted({k for k, _ in items if sum(k == j for j, _ in items) > 1})
    if twice:
        import warnings

        said = "; ".join(f"{k} ({table[k]!r})" for k in twice)
        warnings.warn(
            f"{flag} gives {', '.join(twice)} more than once: the last of each is used: {said}.",
            stacklevel=2,
        )
    return table
