"""The static course pages (`make site`) can show every figure: each notebook that draws a plotly
figure selects minicoder's renderer first, and that renderer gives every figure a self-drawing HTML
view, with plotly.js inlined once. (The browser test opens a built page: tests/test_browser.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_every_notebook_that_shows_a_figure_selects_the_static_renderer_first():
    for src in SOURCES:
        text = src.read_text()
        shows = [m.start() for m in re.finditer(r"\.show\(\)", text)]
        if not shows:
            continue
        imp = text.find("import minicoder.viz.notebook")
        assert 0 <= imp < shows[0], (f"{src.name} shows a plotly figure but does not `import minicoder.viz.notebook` "
                                     "before it: on the static site (make site) the figure would be missing")


def test_the_renderer_inlines_plotly_js_once_and_every_figure_draws_itself():
    from minicoder.viz import notebook

    notebook.reset()
    fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout={"height": 321})
    first = pio.renderers[notebook.RENDERER].to_mimebundle(fig.to_dict())
    second = pio.renderers[notebook.RENDERER].to_mimebundle(fig.to_dict())
    assert pio.renderers.default == notebook.RENDERER
    for bundle in (first, second):
        assert bundle["application/vnd.plotly.v1+json"]["data"][0]["y"] == [3, 4]
        html = bundle["text/html"]
        div = re.search(r'<div id="(mc-[0-9a-f]{12})" class="plotly-graph-div minicoder-figure" style="height:321px', html)
        assert div and f'getElementById("{div.group(1)}")' in html and "Plotly.newPlot" in html
    assert len(first["text/html"]) > 1_000_000 > len(second["text/html"])  # plotly.js (~4.8 MB) in the first only
    assert "</script" not in second["text/html"].split("<script", 2)[1].rsplit("</script>", 1)[0]
