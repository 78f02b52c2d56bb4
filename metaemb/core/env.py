"""On/off environment variables (METAEMB_STRICT_PLUGINS, METAEMB_DEBUG, METAEMB_MANIFEST), read
by one rule: `METAEMB_DEBUG=0` or `=off` meant on when any non-empty value did."""

from __future__ import annotations

import os

from metaemb.core.errors import ConfigError

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool = False, refuse: bool = True) -> bool:
    """The switch `name` (1/0, true/false, yes/no, on/off, any case; unset or empty: `default`).
    Anything else is refused, naming the variable, or with `refuse=False` (a switch every
    command reads, which must not keep `metaemb doctor` from running) warned about and taken
    as `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ON:
        return True
    if value in OFF:
        return False
    message = (f"{name} must be 1 or 0 (also on/off, true/false, yes/no), got "
               f"'{os.environ[name]}'")  # fmt: skip
    if refuse:
        raise ConfigError(message + ".")
    import warnings

    warnings.warn(f"{message}; taken as {'on' if default else 'off'}.", stacklevel=2)
    return default
