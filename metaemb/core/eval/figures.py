"""Drawing figures: matplotlib is an optional extra (`pip install 'metaemb[plots]'`), so it is
imported only when a figure is drawn, and every command still works without it, saying how to get
plots. Figures are written atomically as PNG, stamped with the software that drew them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from metaemb.core.errors import MetaembError
from metaemb.core.files import atomic_write_bytes
from metaemb.core.optional import require
from metaemb.core.paths import PLOT_SOFTWARE


class PlotsUnavailable(MetaembError):
    """matplotlib is missing."""


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive backend, or PlotsUnavailable naming the extra."""
    matplotlib = require("matplotlib", "drawing PNG plots", PlotsUnavailable)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "drawing PNG plots", PlotsUnavailable)


def save_png(fig: Any, path: Path) -> Path:
    """Write `fig` as PNG atomically and close it (the object stays inspectable)."""
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": PLOT_SOFTWARE}
    )
    atomic_write_bytes(path, buf.getvalue())
    pyplot().close(fig)
    return path
