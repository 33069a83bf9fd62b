"""Render a comparison `Table` as Markdown, CSV, an HTML fragment or a LaTeX tabular."""

from __future__ import annotations

import html
import io
from collections.abc import Callable

import pandas as pd

from icl_eval.compare.table import MISSING, ROW_KEYS, Table, cell_texts, footnotes

# Best cells are wrapped in these before escaping, then swapped for the format's own emphasis,
# so the emphasis markup itself is never escaped.
_OPEN, _CLOSE = "\x00", "\x01"


def _rows(table: Table, escape: Callable[[str], str], bold: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    cells = cell_texts(table, emphasise=lambda s: f"{_OPEN}{s}{_CLOSE}")
    extra = [table.reference_label] if table.reference is not None else []
    header = [escape(h) for h in ROW_KEYS + [str(c) for c in cells.columns] + extra]
    rows = []
    for key, row in cells.iterrows():
        texts = [str(k) for k in key] + list(row) + ([str(table.reference.get(key, MISSING))] if extra else [])
        rows.append([escape(t).replace(_OPEN, bold[0]).replace(_CLOSE, bold[1]) for t in texts])
    return header, rows


def _md_escape(text: str) -> str:
    # A literal significance star must not pair up with the bold markers added after escaping.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def to_markdown(table: Table) -> str:
    header, rows = _rows(table, _md_escape, ("**", "**"))
    align = ["---", "---", "---:"] + ["---:"] * (len(header) - 3)
    lines = ["| " + " | ".join(r) + " |" for r in [header, align, *rows]]
    return "\n".join(lines) + "\n\n" + "\n\n".join(footnotes(table, best_marker="bold")) + "\n"


def to_csv(table: Table) -> str:
    # CSV has no emphasis and no room for footnotes, so the best cell carries a word.
    header, rows = _rows(table, lambda s: s, ("", " (best)"))
    buf = io.StringIO()
    pd.DataFrame(rows, columns=header).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def to_html(table: Table) -> str:
    header, rows = _rows(table, html.escape, ("<strong>", "</strong>"))
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    body = "\n".join(
        "<tr>" + "".join(f'<td class="{"key" if i < len(ROW_KEYS) else "num"}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in footnotes(table, best_marker="bold"))
    return f'<table class="compare">\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>\n{notes}\n'


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": "---", "†": r"$^\dagger$",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    header, rows = _rows(table, _latex_escape, (r"\textbf{", "}"))
    spec = "ll" + "r" * (len(header) - 2)
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {n}" for n in footnotes(table, best_marker="bold")]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "csv": to_csv, "html": to_html, "latex": to_latex}


def render(table: Table, fmt: str) -> str:
    return RENDERERS[fmt](table)
