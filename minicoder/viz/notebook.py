"""Plotly figures in notebooks that render everywhere: JupyterLab, and static HTML without a kernel.

Importing this module (every notebook's first cell does) makes the plotly renderer ``minicoder``
the default. Each figure it shows is one mime bundle with two views of the same figure:

- ``application/vnd.plotly.v1+json``: what JupyterLab draws (with the plotly extension);
- ``text/html``: a div and a script that draw it with plotly.js, which is what nbconvert's HTML
  export, the course site (`make site`) and ipywidgets' static HTML manager show.

plotly.js itself (about 4.8 MB) goes inline, once per kernel session, in the HTML view of the first
figure; later figures wait for ``window.Plotly`` to exist (a figure inside a widget may be drawn
before or after the page's first figure), so the page needs no CDN and no network. Plotly's own
``notebook`` renderer also inlines plotly.js, but only through require.js, which nbconvert's page
loads from a CDN; hence this renderer.

If a cell that drew the first figure is cleared and the notebook saved, the static page loses its
plotly.js: run the notebook top to bottom (as `make site` does) before exporting.
"""

from __future__ import annotations

import json
import uuid

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer
from plotly.io.json import to_json

RENDERER = "minicoder"

_state = {"plotlyjs_sent": False}

_DRAW = """<script type="text/javascript">
(function () {{
  var fig = {fig};
  function draw() {{
    var el = document.getElementById("{id}");
    if (!el) {{ return; }}
    if (!window.Plotly) {{ setTimeout(draw, 25); return; }}
    window.Plotly.newPlot(el, fig.data, fig.layout || {{}}, Object.assign({{responsive: true}}, fig.config || {{}}));
  }}
  draw();
}})();
</script>"""


def figure_html(fig_dict: dict, include_plotlyjs: bool) -> str:
    """The text/html view of a figure: [plotly.js inline +] a div + the script that draws it."""
    div_id = f"mc-{uuid.uuid4().hex[:12]}"
    fig_json = to_json(fig_dict, validate=False, remove_uids=False).replace("</", "<\\/")
    height = (fig_dict.get("layout") or {}).get("height") or 450
    parts = []
    if include_plotlyjs:
        from plotly.offline import get_plotlyjs

        parts.append('<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>')
        parts.append('<script type="text/javascript">' + get_plotlyjs().replace("</script", "<\\/script") + "</script>")
    parts.append(f'<div id="{div_id}" class="plotly-graph-div minicoder-figure" style="height:{int(height)}px; '
                 'width:100%;"></div>')
    parts.append(_DRAW.format(fig=fig_json, id=div_id))
    return "\n".join(parts)


class StaticHtmlRenderer(MimetypeRenderer):
    """The plotly mime bundle plus a self-drawing text/html view (see the module docstring)."""

    def to_mimebundle(self, fig_dict):
        fig = json.loads(to_json(fig_dict, validate=False, remove_uids=False))
        include = not _state["plotlyjs_sent"]
        _state["plotlyjs_sent"] = True
        return {"application/vnd.plotly.v1+json": fig, "text/html": figure_html(fig, include)}


def setup() -> None:
    """Make ``minicoder`` the default plotly renderer (idempotent)."""
    if RENDERER not in pio.renderers:
        pio.renderers[RENDERER] = StaticHtmlRenderer()
    pio.renderers.default = RENDERER


def reset() -> None:
    """Send plotly.js again with the next figure (e.g. after clearing every output)."""
    _state["plotlyjs_sent"] = False


setup()
