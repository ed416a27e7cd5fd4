"""Figures that never touch pyplot's global state or the user's matplotlib backend.

`matplotlib.use("Agg")` would switch a notebook user's backend for the whole process; a
`Figure` with its own Agg canvas draws and saves PNGs without registering anywhere, and still
displays in Jupyter when returned.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["new_figure", "save"]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (7, 4),
               sharex: bool = False) -> tuple[Any, Any]:
    """A figure with its own Agg canvas and a (nrows x ncols) array of axes (squeezed for 1x1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=nrows * ncols == 1)
    return fig, axes


def save(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Lays out and writes `fig` as a PNG, creating the folder."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
