"""Result figures for every benchmark report, drawn with matplotlib (headless Agg canvas, no pyplot state).

A figure is one or more side-by-side panels of line series; a series may carry error bars (mean ± std over seeds)
and a reference series (the mean face, a goal) is drawn dashed grey. Each study builds its panels from its own
results and calls ``save_figure``; ticks, grid, legend and file writing live here only.

    save_figure([Panel("without rotation augmentation", [Series("PRNet", angles, nme, err=std), ...],
                       xlabel="test rotation (deg)", ylabel="2D NME (%)")], Path("rotation.png"))
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

#: colour-blind-safe palette (Okabe & Ito), in the order series are given
PALETTE = ("#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
REFERENCE_COLOUR = "#777777"


@dataclass
class Series:
    """One line. x, y: equal-length sequences (non-finite y values leave a gap); err: symmetric error bars or
    None; reference: drawn dashed grey without markers (a baseline such as the mean face); colour: None takes the
    palette's next colour; markers: dots at the data points; width: line width in points; linestyle: matplotlib's
    ("-", ":", ...), "--" for a reference."""
    label: str
    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float] | None = None
    reference: bool = False
    colour: str | None = None
    markers: bool = True
    width: float = 1.8
    linestyle: str = "-"


@dataclass
class Panel:
    """One axes. xticks: explicit tick positions (None: matplotlib's); ymin: lower y limit (None: automatic);
    vlines: x positions of thin grey verticals (e.g. the angles where a result is exact)."""
    title: str
    series: list[Series]
    xlabel: str
    ylabel: str
    xticks: Sequence[float] | None = None
    ymin: float | None = 0.0
    vlines: Sequence[float] = field(default_factory=tuple)


def save_figure(panels: list[Panel], path: Path, *, panel_size: tuple[float, float] = (5.6, 3.8), dpi: int = 110,
                share_y: bool = True, legend_below: bool | None = None) -> Path:
    """Draw the panels side by side and write a PNG atomically. share_y: one y range for all panels.
    legend_below: one legend under the figure (default when there are several panels) instead of one per panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from faceutil.sampleio import atomic_write_bytes

    legend_below = len(panels) > 1 if legend_below is None else legend_below
    fig = Figure(figsize=(panel_size[0] * len(panels), panel_size[1] + (0.5 if legend_below else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=share_y, squeeze=False)[0]
    handles = {}
    for ax, panel in zip(axes, panels):
        colours = iter(PALETTE)
        for s in panel.series:
            colour = REFERENCE_COLOUR if s.reference else (s.colour or next(colours))
            style = dict(label=s.label, color=colour, linewidth=1.2 if s.reference else s.width,
                         linestyle="--" if s.reference else s.linestyle,
                         marker="o" if s.markers and not s.reference else None, markersize=3.5)
            if s.err is not None:
                line = ax.errorbar(s.x, s.y, yerr=s.err, capsize=2, elinewidth=0.9, **style).lines[0]
            else:
                line = ax.plot(s.x, s.y, **style)[0]
            handles.setdefault(s.label, line)
        for x in panel.vlines:
            ax.axvline(x, color="#dddddd", linewidth=0.8, zorder=0)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.xticks is not None:
            ax.set_xticks(list(panel.xticks))
        if panel.ymin is not None:
            ax.set_ylim(bottom=panel.ymin)
        ax.grid(True, color="#e6e6e6", linewidth=0.7)
        ax.set_axisbelow(True)
        if not legend_below:
            ax.legend(fontsize=8, frameon=False)
    if legend_below:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6),
                   fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
