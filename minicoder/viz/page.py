"""Self-contained HTML pages of plotly figures and tables (the demo report, `minicoder compare`).

One file, readable offline, forever: plotly.js is inlined once in the page's head (no CDN, no
network), each figure is a div drawn by `Plotly.newPlot`, tables are plain HTML. A page is a list
of blocks: a `plotly.graph_objects.Figure`, an `Html` string (already HTML), or plain text (escaped,
one paragraph).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary { background: #f6f8fa; border-left: 4px solid #4C78A8; padding: 0.6em 1em; }
.figure { margin: 1em 0; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


class Html(str):
    """A block that is already HTML (not escaped)."""


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, num_format: str = "{:.4g}") -> Html:
    """An HTML table; numbers are right-aligned and formatted with `num_format`."""

    def cell(v: Any, tag: str = "td") -> str:
        if isinstance(v, bool) or v is None:
            return f"<{tag}>{html.escape(str(v))}</{tag}>"
        if isinstance(v, (int, float)):
            text = str(v) if isinstance(v, int) else num_format.format(v)
            return f'<{tag} class="num">{html.escape(text)}</{tag}>'
        return f"<{tag}>{html.escape(str(v))}</{tag}>"

    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(cell(h, "th") for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(cell(v) for v in r) + "</tr>")
    out.append("</table>")
    return Html("\n".join(out))


def figure_div(fig, div_id: str | None = None) -> str:
    """A figure as a div + script drawing it with the page's (already loaded) plotly.js."""
    return '<div class="figure">' + fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                                                 config={"responsive": True}) + "</div>"


def plotly_js_tag() -> str:
    """plotly.js, inlined, in one <script> (about 4.8 MB)."""
    from plotly.offline import get_plotlyjs

    return '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n' \
           f'<script type="text/javascript">{get_plotlyjs()}</script>'


def render_page(title: str, blocks: Iterable[Any]) -> str:
    """The whole page as a string (see the module docstring for the blocks)."""
    body = []
    n = 0
    for b in blocks:
        if hasattr(b, "to_html") and hasattr(b, "layout"):
            n += 1
            body.append(figure_div(b, div_id=f"figure-{n}"))
        elif isinstance(b, Html):
            body.append(str(b))
        else:
            body.append(f"<p>{html.escape(str(b))}</p>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            f"<style>{CSS}</style>\n{plotly_js_tag()}\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_page(path, title: str, blocks: Iterable[Any]) -> None:
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(render_page(title, blocks), encoding="utf-8")
    tmp.replace(p)
