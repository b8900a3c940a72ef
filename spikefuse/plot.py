"""``plot_shapes`` and ``python -m spikefuse plot`` — pictures of the surrogate shapes.

One panel per shape at its default parameters: the smooth function g (where the shape
defines one), its derivative g′ (the surrogate gradient used as dH/dx) and, faintly, the
Heaviside step H that the forward pass actually computes. Needs matplotlib (the ``plot``
extra); it is imported only when a plot is drawn, and drawn with the Agg canvas, so the
caller's pyplot backend is never changed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from spikefuse.surrogate import registry

__all__ = ["add_plot_parser", "plot_shapes", "run_plot"]

if TYPE_CHECKING:  # matplotlib is optional (the plot extra): imported when a plot is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

_INSTALL_HINT = 'plotting needs matplotlib: pip install "spikefuse[plot]"'


def _matplotlib() -> tuple[type[Figure], type[FigureCanvasAgg]]:
    """The Figure class and the Agg canvas, or an ImportError that says what to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return Figure, FigureCanvasAgg


def plot_shapes(names: Sequence[str] | None = None, out: str | os.PathLike = "shapes.png",
                x_range: tuple[float, float] = (-3.0, 3.0), *, points: int = 2001,
                columns: int | None = None, dpi: int = 110) -> str:
    """Draws g and g′ of the chosen surrogate shapes, one panel each, into an image file.

    Args:
      names: shape class or functional names (case-insensitive, as accepted by
        ``spikefuse.surrogate.get``); ``None`` or empty draws all 18 built-in shapes in
        braintools' order.
      out: the image path; the format follows its suffix (``.png``, ``.svg``, ``.pdf``).
      x_range: ``(low, high)`` of x on every panel.
      points: samples of x per curve (dense by default so narrow peaks such as
        ``InvSquareGrad(alpha=100)`` are resolved).
      columns: panels per row; default up to 6.
      dpi: resolution of raster output.

    Returns:
      ``out`` as a string.

    Raises:
      ValueError: an unknown shape name (from ``spikefuse.surrogate.registry.spec``), or an
        empty or reversed ``x_range``.
      ImportError: matplotlib is not installed.

    Example:
      >>> from spikefuse.plot import plot_shapes
      >>> plot_shapes(["sigmoid", "arctan"], out="two.png")  # doctest: +SKIP
      'two.png'
    """
    specs = list(registry.SHAPES) if not names else [registry.spec(n) for n in names]
    lo, hi = (float(v) for v in x_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"x_range must be two finite numbers (low, high) with low < high; "
                         f"got {tuple(x_range)!r}")
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    Figure, FigureCanvasAgg = _matplotlib()  # before any work, so a missing extra fails fast

    # Always include x = 0 exactly, where the narrow peaks are.
    x = np.union1d(np.linspace(lo, hi, points), [0.0] if lo < 0.0 < hi else [])
    ncols = columns or min(6, len(specs))
    nrows = math.ceil(len(specs) / ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.7 * nrows + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, shape in zip(axes.flat, specs):
        s = shape.cls()
        ax.step(x, (x >= 0).astype(float), where="post", color="0.7", lw=1.0, ls=":",
                label="H (forward)")
        if shape.has_fun:
            ax.plot(x, np.asarray(s.surrogate_fun(x)), color="tab:blue", lw=1.8, label="g")
        ax.plot(x, np.asarray(s.surrogate_grad(x)), color="tab:orange", lw=1.8,
                label="g′ (backward)")
        ax.set_title(repr(s), fontsize=8.5)
        ax.axhline(0.0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
        ax.set_xlim(lo, hi)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
        if not shape.has_fun:
            ax.text(0.03, 0.95, "no g defined", transform=ax.transAxes, fontsize=7.5,
                    va="top", color="0.4")
    for ax in axes.flat[len(specs):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("x = v − v_th", fontsize=8.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("value", fontsize=8.5)
    from matplotlib.lines import Line2D  # matplotlib is importable by now

    handles = [Line2D([], [], color="0.7", lw=1.0, ls=":", label="H (forward)"),
               Line2D([], [], color="tab:orange", lw=1.8, label="g′ (backward)")]
    if any(s.has_fun for s in specs):
        handles.insert(1, Line2D([], [], color="tab:blue", lw=1.8, label="g"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9,
               frameon=False)
    fig.suptitle("spikefuse surrogate shapes at default parameters: "
                 "smooth g (where defined), gradient g′", fontsize=11)
    fig.savefig(out)
    return os.fspath(out)


def add_plot_parser(
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Adds the ``plot`` subcommand to an argparse ``subparsers``; its handler is ``run_plot``
    (stored as the ``handler`` default)."""
    p = subparsers.add_parser(
        "plot", help="draw the surrogate shapes' g and g' into an image",
        description="Draws each chosen surrogate shape's smooth function g (where defined) and "
                    "its gradient g' at default parameters, one panel per shape. Needs "
                    'matplotlib: pip install "spikefuse[plot]".')
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="shapes by class or functional name, e.g. Sigmoid arctan "
                        "(default: all 18)")
    p.add_argument("--out", default="shapes.png",
                   help="output image; the format follows the suffix (default shapes.png)")
    p.add_argument("--x-range", nargs=2, type=float, default=(-3.0, 3.0), metavar=("LOW", "HIGH"),
                   help="x range of every panel (default -3 3)")
    p.add_argument("--columns", type=int, default=None, help="panels per row (default up to 6)")
    p.set_defaults(handler=run_plot)
    return p


def run_plot(args: argparse.Namespace) -> int:
    """The ``plot`` subcommand: draws, prints where the image went, returns the exit code."""
    try:
        out = plot_shapes(args.names or None, out=args.out, x_range=tuple(args.x_range),
                          columns=args.columns)
    except (ValueError, ImportError) as err:
        print(f"python -m spikefuse plot: error: {err}", file=sys.stderr)
        return 2
    count = len(args.names) if args.names else len(registry.SHAPES)
    print(f"wrote {out} ({count} shape{'s' if count != 1 else ''})")
    return 0
