"""The report page: HTML and Markdown written side by side, tables also as CSV (rendering only;
what goes into the tables is decided in ``flawmap.report.select``)."""

from __future__ import annotations

import csv
import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..viz.text import format_label, format_value
from .select import Table

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}h3{margin-top:1.6rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}td.best{font-weight:700;
background:#e8f4e8}figure{margin:.6rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8rem;
color:#555}.row{display:flex;flex-wrap:wrap;gap:.8rem}.row figure{margin:0}.small img{max-width:680px}
nav ul{columns:2;font-size:.9rem}.csv{font-size:.8rem;margin-top:0}.meta{color:#555;font-size:.9rem}
"""


def _html_page(title: str, body: str, toc: list[tuple[str, str]]) -> str:
    nav = "<nav><ul>" + "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in toc) + "</ul></nav>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{nav}{body}</body></html>\n")


@dataclass
class Page:
    out: Path
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    n_img: int = 0

    def section(self, anchor: str, title: str, level: int = 2) -> None:
        if level == 2:
            self.toc.append((anchor, title))
        self.html.append(f'<h{level} id="{anchor}">{html.escape(title)}</h{level}>')
        self.md.append(f"\n{'#' * level} {title}\n")

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def image(self, rel: str, alt: str, caption: str | None = None) -> None:
        self.n_img += 1
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(alt)}">{cap}</figure>')
        self.md.append(f"![{alt}]({rel})" + (f"\n*{caption}*" if caption else "") + "\n")

    def images(self, items: Sequence[tuple[str, str, str]]) -> None:
        """A row of (rel path, alt, caption) pictures."""
        cells = []
        for rel, alt, cap in items:
            self.n_img += 1
            cells.append(f'<figure class="small"><img src="{html.escape(rel)}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
            self.md.append(f"![{alt}]({rel}) *{cap}*  ")
        self.html.append('<div class="row">' + "".join(cells) + "</div>")
        self.md.append("")

    def table(self, t: Table) -> None:
        """The table in HTML and Markdown (values through format_value) and, with a csv_name, as tables/<name>."""
        header, body, csv_name = t.header, t.body, t.csv_name
        cells = [[format_value(v, t.digits, large_digits=None) for v in row] for row in body]
        bold = t.bold or [[False] * len(header) for _ in body]
        self._table_html(header, cells, bold, csv_name)
        self._table_md(header, cells, bold, csv_name)
        if csv_name:
            self._table_csv(header, body, csv_name)

    def _table_html(self, header: Sequence[str], cells: list[list[str]], bold: Sequence[Sequence[bool]],
                    csv_name: str | None) -> None:
        h = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr></thead><tbody>"]
        for row, b in zip(cells, bold):
            tds = "".join(f'<td class="best">{html.escape(c)}</td>' if bb else f"<td>{html.escape(c)}</td>"
                          for c, bb in zip(row, b))
            h.append(f"<tr>{tds}</tr>")
        h.append("</tbody></table>")
        if csv_name:
            h.append(f'<p class="csv"><a href="tables/{csv_name}">{html.escape(csv_name)}</a></p>')
        self.html.append("".join(h))

    def _table_md(self, header: Sequence[str], cells: list[list[str]], bold: Sequence[Sequence[bool]],
                  csv_name: str | None) -> None:
        md = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
        for row, b in zip(cells, bold):
            md.append("| " + " | ".join(f"**{c}**" if bb else c for c, bb in zip(row, b)) + " |")
        self.md.append("\n".join(md) + ("\n\n" + f"[{csv_name}](tables/{csv_name})" if csv_name else "") + "\n")

    def _table_csv(self, header: Sequence[str], body: Sequence[Sequence[Any]], csv_name: str) -> None:
        path = self.out / "tables" / csv_name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in body:
                w.writerow(["" if v is None else format_label(v) if isinstance(v, (list, tuple)) else v for v in row])

    def copy(self, src: Path, rel: str) -> str:
        """Copy a stored picture into the report folder at ``rel``; returns rel."""
        dst = self.out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        return rel

    def write(self, title: str) -> None:
        """index.html (self-contained: inline CSS, no script, no external URL) and report.md."""
        (self.out / "index.html").write_text(_html_page(title, "\n".join(self.html), self.toc))
        (self.out / "report.md").write_text(f"# {title}\n\n" + "\n".join(self.md))


def slug(*parts: Any) -> str:
    """A file-name-safe name made of the parts' labels (at most 120 characters)."""
    s = "_".join(format_label(p) for p in parts if p not in (None, ""))
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)[:120] or "x"


__all__ = ["Page", "slug"]
