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


class _Figures:
    """The part of pyplot metaemb draws with, on figures of their own with an Agg canvas: no
    pyplot state and no global backend, so a notebook's or a GUI's backend stays its own."""

    def __init__(self, matplotlib: Any) -> None:
        self._matplotlib = matplotlib

    def subplots(self, *args: Any, figsize: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        """(figure, axes) as `pyplot.subplots` returns them."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        return fig, fig.subplots(*args, **kwargs)

    def get_cmap(self, name: str) -> Any:
        return self._matplotlib.colormaps[name]

    def close(self, fig: Any) -> None:
        """Nothing to close: no pyplot registry holds the figure."""


def pyplot() -> Any:
    """What metaemb draws with (`subplots`, `get_cmap`, `close`, as pyplot names them), or
    PlotsUnavailable naming the extra. The caller's matplotlib backend is left as it is."""
    matplotlib = require("matplotlib", "drawing PNG plots", PlotsUnavailable)
    require("matplotlib.figure", "drawing PNG plots", PlotsUnavailable)
    return _Figures(matplotlib)


def save_png(fig: Any, path: Path) -> Path:
    """Write `fig` as PNG atomically (the object stays inspectable)."""
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": PLOT_SOFTWARE}
    )
    atomic_write_bytes(path, buf.getvalue())
    return path
