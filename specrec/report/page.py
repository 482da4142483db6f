"""The report as one self-contained HTML page (inline style, no scripts); figures are PNG files beside it."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable

import pandas as pd

from specrec.report.runs import run_link
from specrec.report.sections import Section

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; font-size: 0.9em; } .empty { background: #fff6d6; padding: 0.6em 1em; }
.note { color: #8a4b00; font-size: 0.9em; } img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85em; margin-top: 0.8em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td.text { text-align: left; white-space: normal; }
td.cycle { text-align: left; } .wide { overflow-x: auto; } a { color: #1a5fb4; }
"""


def _cell(value: object) -> str:
    """A table cell's text: 4 significant figures for floats, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 or value == int(value) else f"{value:.4g}"
    return str(value)


def _table(frame: pd.DataFrame, max_rows: int = 60) -> str:
    """An HTML table of a section's rows (the newest max_rows); the cycle links to its run when it has one."""
    columns = [c for c in frame.columns if c != "_link"]
    shown = frame.tail(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for _, row in shown.iterrows():
        cells = []
        for c in columns:
            text, numeric = html.escape(_cell(row[c])), isinstance(row[c], int | float)
            if c == "cycle" and row.get("_link"):
                text = f'<a href="{html.escape(str(row["_link"]))}">{text}</a>'
            kind = "" if numeric else " class=cycle" if c == "cycle" else " class=text"
            cells.append(f"<td{kind}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class=meta>the newest {max_rows} of {len(frame)} rows</p>" if len(frame) > max_rows else ""
    return f"<div class=wide><table><tr>{head}</tr>{''.join(rows)}</table></div>{more}"


def _links(section: Section, ui: str) -> str:
    """Links to the section's experiments in the MLflow UI (machine-learning view)."""
    parts = [
        f'<a href="{html.escape(run_link(ui, eid))}">{html.escape(name)} runs in MLflow</a>'
        for name, eid in section.experiments.items()
    ]
    return " · ".join(parts)


def _section(section: Section, ui: str) -> Iterable[str]:
    """The HTML of one section."""
    yield f'<h2 id="{section.key}">{html.escape(section.title)}</h2>'
    links = _links(section, ui)
    yield f"<p class=meta>{section.n_runs} runs · {links}</p>" if links else ""
    yield f"<p>{html.escape(section.about)}</p>"
    if section.empty:
        yield f"<p class=empty>{html.escape(section.empty)}</p>"
        return
    for note in section.notes:
        yield f"<p class=note>compare view: {html.escape(note)}</p>"
    for fig in section.figures:
        yield f'<p><img src="{html.escape(fig.name)}" alt="{html.escape(section.title)}"></p>'
    if section.table is not None and len(section.table):
        yield _table(section.table)


def render(sections: list[Section], ui: str, store: str, generated: str) -> str:
    """The whole page."""
    toc = "".join(
        f'<li><a href="#{s.key}">{html.escape(s.title)}</a> ({s.n_runs} runs{", none yet" * bool(s.empty)})'
        "</li>"
        for s in sections
    )
    body = "\n".join(part for s in sections for part in _section(s, ui) if part)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>specrec report</title><style>{STYLE}</style></head>
<body>
<h1>specrec report</h1>
<p class=meta>MLflow store {html.escape(store)} · generated {html.escape(generated)} ·
MLflow UI <a href="{html.escape(ui)}">{html.escape(ui)}</a> (start it with <code>make mlflow-ui</code>).
Runs line up by cycle: every per-cycle run carries its cycle's <code>as_of</code> as a tag and run name.</p>
<ul>{toc}</ul>
{body}
</body></html>
"""
