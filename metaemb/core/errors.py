"""User-facing errors: the CLI prints their message as one paragraph, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MetaembError(Exception):
    """An error caused by input the user can fix; its message says what and where."""


class ConfigError(MetaembError):
    """A bad configuration key, value or type."""


class DataError(MetaembError):
    """Missing, empty, corrupt or malformed data (names the file and, where known, the line)."""


class DatasetError(DataError):
    """A file describing the whole dataset (a landmark table) is broken: no one sample is to
    blame, so the message names that file alone and the run stops, even where bad samples
    would be skipped."""


class OutputError(MetaembError):
    """An output path that cannot be written (read-only, full disk, a file or folder in the way)."""


class GalleryError(MetaembError):
    """A missing, unreadable or foreign gallery, or bad enrollment/search input."""


class ScorerError(MetaembError):
    """A scorer that cannot score here: an unknown name, one of the other kind of embeddings,
    one that must be fitted and has no fitted state, one that cannot search
    (`core/scoring/choice.py` decides, for every command)."""


class PluginError(MetaembError):
    """A plugin failed to load, or two plugins registered the same name."""


class UnknownComponentError(MetaembError):
    """A component name that no plugin registered."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return " did you mean 'x'?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)  # not 'nope'→'compile'

    return f" did you mean '{close[0]}'?" if close else ""


def first_line(exc: BaseException, most: int = 300) -> str:
    """Why `exc` happened, in one line: the first line of its message (a library's page of
    advice would flood a one-paragraph error), at most `most` characters."""
    text = str(exc)
    return text.splitlines()[0][:most] if text else ""


def first_few(items: Iterable[object], most: int = 5, quote: bool = True) -> str:
    """Items for a message: the first `most` (quoted), then how many more — "'a', 'b' and 3
    more" — so a long list of bad files never floods the terminal."""
    items = list(items)
    shown = ", ".join(repr(str(i)) if quote else str(i) for i in items[:most]) or "(none)"
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")
