"""The report's figures: per-cycle line panels and the FM's learning curves, written as PNG files.

matplotlib's object API (`Figure`, rendered by Agg on savefig) is used instead of pyplot, so nothing
global (backend, current figure) is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STYLES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class Panel:
    """One subplot: a line per label over the cycles (values indexed by cycle name; NaN = a gap)."""

    title: str
    ylabel: str
    lines: dict[str, pd.Series]
    ylim: tuple[float, float] | None = None
    log: bool = False
    hlines: dict[str, float] = field(default_factory=dict)  # label -> constant reference value


def _has_values(panel: Panel) -> bool:
    """Whether any line of the panel has a finite value."""
    return any(s.notna().any() for s in panel.lines.values()) or bool(panel.hlines)


def cycle_plot(path: Path, title: str, cycles: list[str], panels: list[Panel]) -> Path | None:
    """Panels side by side over the same cycles (x = the cycle's as_of); None when nothing has a value."""
    from matplotlib.figure import Figure

    panels = [p for p in panels if _has_values(p)]
    if not panels or not cycles:
        return None
    fig = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    x = list(range(len(cycles)))
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for i, (label, values) in enumerate(panel.lines.items()):
            y = values.reindex(cycles).astype(float)
            if y.notna().any():
                style = STYLES[i % len(STYLES)]
                ax.plot(x, y.to_numpy(), style, marker=MARKERS[i % len(MARKERS)], label=label)
        for i, (label, value) in enumerate(panel.hlines.items()):
            ax.axhline(value, color="grey", linestyle=STYLES[(i + 1) % len(STYLES)], label=label)
        _axes(ax, panel, cycles)
    fig.suptitle(title)
    return _save(fig, path)


def _axes(ax: Axes, panel: Panel, cycles: list[str]) -> None:
    """Title, labels, ticks, limits, grid and legend of one panel."""
    ax.set_title(panel.title)
    ax.set_ylabel(panel.ylabel)
    ax.set_xlabel("cycle (as_of, UTC)")
    step = max(1, math.ceil(len(cycles) / 12))  # at most ~12 labels stay readable
    ax.set_xticks(range(0, len(cycles), step))
    ax.set_xticklabels(cycles[::step], rotation=35, ha="right", fontsize=8)
    if len(cycles) == 1:
        ax.set_xlim(-0.5, 0.5)
    if panel.log:
        ax.set_yscale("log")
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def curves_plot(
    path: Path, title: str, curves: dict[str, pd.Series], xlabel: str, ylabel: str
) -> Path | None:
    """One line per label over its own index (e.g. validation NDCG@10 per epoch of each training run)."""
    from matplotlib.figure import Figure

    curves = {k: v for k, v in curves.items() if v.notna().any()}
    if not curves:
        return None
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(values.index, values.to_numpy(), STYLES[i % len(STYLES)], marker=MARKERS[i % 7], label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def stacked_bars(
    path: Path, title: str, cycles: list[str], parts: dict[str, pd.Series], ylabel: str
) -> Path | None:
    """One bar per cycle split into parts (e.g. seconds per step of the daily cycle); None when empty."""
    from matplotlib.figure import Figure

    parts = {k: v.reindex(cycles).astype(float).fillna(0.0) for k, v in parts.items() if v.notna().any()}
    if not parts or not cycles:
        return None
    fig = Figure(figsize=(max(6.4, 0.6 * len(cycles) + 3.0), 4.2), layout="constrained")
    ax = fig.subplots()
    x, bottom = list(range(len(cycles))), pd.Series(0.0, index=cycles)
    for label, values in parts.items():
        ax.bar(x, values.to_numpy(), 0.6, bottom=bottom.to_numpy(), label=label)
        bottom += values
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("cycle (as_of, UTC)")
    step = max(1, math.ceil(len(cycles) / 12))
    ax.set_xticks(range(0, len(cycles), step))
    ax.set_xticklabels(cycles[::step], rotation=35, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
