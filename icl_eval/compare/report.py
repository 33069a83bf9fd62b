"""One self-contained HTML report: the table, the warnings and the plots as base64 data URIs.

Everything is inline (styles, images, no fonts or scripts), so the file opens offline and can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from icl_eval import __version__
from icl_eval.compare.formats import to_html
from icl_eval.compare.plots import Plot
from icl_eval.compare.table import Table

# Fits a 1400 px window (and narrower ones): the page never scrolls sideways. A table with many model columns
# scrolls inside its own box (div.table-wrap); plots shrink to the width; long paths and warnings wrap.
_STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1400px; color: #222;
       overflow-wrap: anywhere; }
div.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.5em 0; }
table.compare { border-collapse: collapse; font-variant-numeric: tabular-nums; overflow-wrap: normal; }
table.compare th, table.compare td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; }
table.compare td.num { text-align: right; white-space: nowrap; }
p.note { font-size: 0.9em; color: #555; margin: 0.3em 0; }
.warning { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.4em 0.8em; margin: 0.3em 0; }
figure { display: inline-block; margin: 0.5em; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; text-align: center; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figures(plots: Sequence[Plot]) -> str:
    parts: list[str] = []
    for task in dict.fromkeys(p.task for p in plots):
        parts.append(f"<h3>{html.escape(task)}</h3>")
        for plot in (p for p in plots if p.task == task):
            parts.append(
                f'<figure><img src="{data_uri(plot.png)}" alt="{html.escape(plot.title)}">'
                f"<figcaption>{html.escape(plot.title)}</figcaption></figure>"
            )
    return "\n".join(parts)


def build_report(table: Table, plots: Sequence[Plot], warnings: Sequence[str], sources: Sequence[str]) -> str:
    warning_html = "\n".join(f'<p class="warning">{html.escape(w)}</p>' for w in warnings)
    source_html = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in sources)
    plots_html = f"<h2>Plots</h2>\n{_figures(plots)}" if plots else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>icl-eval comparison</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>icl-eval comparison</h1>
{warning_html}
<h2>Scores</h2>
<div class="table-wrap">
{to_html(table)}</div>
{plots_html}
<h2>Runs</h2>
<ul>{source_html}</ul>
<p class="note">Made by icl-eval {html.escape(__version__)} <code>compare</code>.</p>
</body>
</html>
"""
