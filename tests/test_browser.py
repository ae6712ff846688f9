"""A real browser shows that the course and the reports work.

- JupyterLab, started on loopback (a free port, a token), opens `01_data_and_packing.ipynb` in
  headless Chromium and runs every cell; the plotly figures and the ipywidgets slider are rendered
  (checked in the DOM), and moving the slider redraws the figure for the new row length.
- The demo's HTML report and a page of the course site (`make site`'s export of notebook 01, built
  here) open from disk: every figure is drawn, the slider section is there, nothing is fetched from
  the network (no CDN) and the browser console shows no error.

The browser is Debian's chromium driven by Playwright (`executable_path`; Playwright's own browser
download needs its CDN). In CI (CI=true) a missing chromium or playwright is a failure; elsewhere
the tests skip with the reason. Screenshots go to tests/artifacts/browser/ (MINICODER_ARTIFACTS
overrides it); the tests print where.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
NOTEBOOK = ROOT / "notebooks" / "01_data_and_packing.ipynb"
MS = 1000

pytestmark = pytest.mark.slow


def _missing(why: str):
    if IN_CI:
        pytest.fail(f"the browser tests must run in CI, but {why} (scripts/setup.sh installs chromium when CI=true)")
    pytest.skip(f"{why}; the browser tests run in CI (here: apt-get install chromium, or MINICODER_BROWSER=1 make setup)")


def chromium_path() -> str:
    path = os.environ.get("MINICODER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _missing("Debian's chromium is not installed")
    return path


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (it is a dev dependency: make setup)")
    pw = sync_playwright().start()
    args = ["--disable-dev-shm-usage", "--disable-gpu"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    b = pw.chromium.launch(executable_path=path, headless=True, args=args)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    d = Path(os.environ.get("MINICODER_ARTIFACTS") or ROOT / "tests" / "artifacts") / "browser"
    d.mkdir(parents=True, exist_ok=True)
    print(f"\n[browser] screenshots in {d}")
    return d


class Page:
    """A page with every console error, page error and network request recorded."""

    def __init__(self, browser, offline: bool):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(120 * MS)
        self.errors: list[str] = []
        self.fetched: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        if offline:  # a static page must need nothing but itself (and files next to it)
            self.page.route("**/*", self._offline)

    def _offline(self, route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            self.fetched.append(url)
            route.abort()

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"[browser] screenshot: {path}")

    def close(self) -> None:
        self.context.close()


DRAWN = """sel => [...document.querySelectorAll(sel)].map(d => ({
    drawn: d.classList.contains('js-plotly-plot') && !!d.querySelector('.main-svg'),
    traces: (d.data || []).length,
    title: ((d.layout || {}).title || {}).text || null}))"""

STATIC_FIGURES = ".plotly-graph-div"  # a page's figure divs; plotly.js adds .js-plotly-plot when it draws one
LAB_FIGURES = ".jp-Notebook .js-plotly-plot"  # JupyterLab's plotly renderer draws into the output element itself


def wait_all_figures_drawn(p: Page, at_least: int, selector: str = STATIC_FIGURES, timeout_s: float = 120) -> list[dict]:
    """Wait until at least `at_least` plotly figures exist and every one of them is drawn."""
    try:
        p.page.wait_for_function(
            """([sel, n]) => { const d = [...document.querySelectorAll(sel)];
                return d.length >= n && d.every(x => x.classList.contains('js-plotly-plot') && x.querySelector('.main-svg')); }""",
            arg=[selector, at_least], timeout=timeout_s * MS)
    except Exception as e:
        raise AssertionError(f"not every figure was drawn in {timeout_s:.0f} s (want at least {at_least} {selector}): "
                             f"{p.page.evaluate(DRAWN, selector)}; console errors: {p.errors[:5]}") from e
    figs = p.page.evaluate(DRAWN, selector)
    assert len(figs) >= at_least and all(f["drawn"] and f["traces"] > 0 for f in figs), figs
    return figs


def assert_clean(p: Page, what: str) -> None:
    assert not p.fetched, f"{what} fetched from the network (it must read offline): {p.fetched[:5]}"
    assert not p.errors, f"{what}: errors in the browser console: {p.errors[:5]}"


# --- the demo's report ------------------------------------------------------------------------------

def demo_report(out: Path) -> Path:
    """A real demo report: the quick profile's stages up to pretraining (2 steps) and the demo's own
    report writer. The later stages (tasks, mid-training, rewards) add tables, not figure kinds."""
    from minicoder.cli import build_parser
    from minicoder.demo.pipeline import load_results, run_stages
    from minicoder.demo.report import write_report
    from minicoder.demo.stages import STAGES

    args = build_parser().parse_args(["demo", "--quick", "--train-steps", "2", "--backend", "local", "--out", str(out)])
    args.profile, args.backend_resolved = "quick", "local"
    stages = [s for s in STAGES if s.name in ("corpus", "tokenizer", "pack", "model", "pretrain")]
    ran = run_stages(stages, out, args, log=lambda *_: None)
    html, _ = write_report(out, load_results(stages, out), "quick", 1.0, [r.name for r in ran])
    return html


def test_demo_report_draws_every_figure_offline_without_console_errors(browser, artifacts, tmp_path):
    html = demo_report(tmp_path / "demo")
    text = html.read_text()
    expected = text.count('class="plotly-graph-div"')
    assert expected >= 4, "the report should carry the stage times, packing, loss and expert-load figures"
    p = Page(browser, offline=True)
    try:
        p.page.goto(html.as_uri(), wait_until="load")
        figs = wait_all_figures_drawn(p, expected)
        p.screenshot(artifacts / "demo_report.png", full_page=True)
        assert len(figs) == expected
        titles = " | ".join(str(f["title"]) for f in figs)
        assert "fill" in titles.lower() and "loss" in titles.lower(), titles
        assert p.page.locator("table").count() >= 2  # the stage table and the metrics table
        assert_clean(p, "the demo report")
    finally:
        p.close()


# --- a page of the course site ------------------------------------------------------------------------

def test_course_site_page_of_notebook_01_draws_figures_and_the_slider_offline(browser, artifacts, tmp_path):
    if shutil.which("npm") is None and not (ROOT / ".cache" / "site" / "html-manager" / "package" / "dist" / "embed.js").is_file():
        _missing("npm is not installed (the course page fetches the ipywidgets HTML manager with it, once)")
    # `make site`'s command for one page, in its own process (as make runs it; nbclient's event loop
    # and Playwright's must not share this one)
    out = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "minicoder.viz.site", "--only", "01", "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    page_path = out / "01_data_and_packing.html"
    assert sorted(p.name for p in out.glob("*.html")) == ["01_data_and_packing.html", "index.html"]
    # each figure's HTML view (also the one saved inside the slider's widget state) carries this class
    expected = page_path.read_text().count("plotly-graph-div minicoder-figure")
    assert expected >= 3, "the fill histogram, the strip picture and the slider's histogram"
    p = Page(browser, offline=True)
    try:
        p.page.goto(page_path.as_uri(), wait_until="load")
        # the slider section: the ipywidgets HTML manager renders the saved widget state
        p.page.wait_for_selector(".widget-hslider", timeout=120 * MS)
        slider_out = p.page.locator(".widget-output .plotly-graph-div, .jupyter-widgets-output-area .plotly-graph-div")
        slider_out.first.wait_for(timeout=120 * MS)
        figs = wait_all_figures_drawn(p, expected)
        assert len(figs) == expected
        p.page.locator(".widget-hslider").first.scroll_into_view_if_needed()
        p.screenshot(artifacts / "site_01_slider.png")
        p.screenshot(artifacts / "site_01.png", full_page=True)
        assert any("L = 2048" in str(f["title"]) for f in figs), [f["title"] for f in figs]
        assert "2048" in p.page.locator(".widget-hslider .widget-readout").first.inner_text()
        assert_clean(p, "the course page of notebook 01")
    finally:
        p.close()


# --- JupyterLab ------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root_dir: Path, home: Path):
    """A JupyterLab server on 127.0.0.1 (a free port, a random token) with isolated settings."""
    port, token = _free_port(), secrets.token_hex(16)
    dirs = {k: home / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                                           "JUPYTERLAB_WORKSPACES_DIR")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # no news or update pop-ups over the notebook; every cell in the DOM (JupyterLab's default windowing
    # leaves the cells outside the viewport unrendered, and their figures undrawn)
    settings = {("apputils-extension", "notification"): {"fetchNews": "false", "checkForUpdates": False},
                ("notebook-extension", "tracker"): {"windowingMode": "none"}}
    for (ext, name), values in settings.items():
        folder = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / ext
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, "MINICODER_CI": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_path = home / "jupyterlab.log"
    log = open(log_path, "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"JupyterLab exited ({proc.returncode}): {log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"JupyterLab did not answer in 180 s: {log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield base, token, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


NOTEBOOK_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.sessionContext) return {ready: false};
  const ctx = w.sessionContext, kernel = ctx.session && ctx.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of cells) for (const o of c.model.outputs.toJSON())
    if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  return {ready: !!kernel && kernel.connectionStatus === 'connected', status: ctx.kernelDisplayStatus,
          cells: cells.length, done: cells.filter(c => c.model.executionCount !== null).length, errors};
}"""


def test_jupyterlab_runs_notebook_01_with_its_figures_and_a_live_slider(browser, artifacts, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)  # JupyterLab saves as it runs: never the repository's copy
    with jupyterlab(work, tmp_path / "home") as (base, token, log_path):
        p = Page(browser, offline=False)
        shot = artifacts / "jupyterlab_01.png"
        try:
            p.page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="domcontentloaded")
            p.page.wait_for_function(f"() => {{ const s = ({NOTEBOOK_STATE})(); return s.ready && s.status === 'idle'; }}",
                                     timeout=180 * MS)
            p.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            deadline, state = time.time() + 900, {}
            while time.time() < deadline:  # poll, so that an error fails at once with its message
                state = p.page.evaluate(NOTEBOOK_STATE)
                assert not state["errors"], f"a cell failed in JupyterLab: {state['errors']}"
                if state["done"] == state["cells"] and state["status"] == "idle":
                    break
                time.sleep(1)
            assert state.get("done") == state.get("cells") and state["cells"] > 10, f"not every cell ran: {state}"

            # every figure output is drawn; the slider and the figure it drives are there
            n_figs = p.page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
                .filter(c => c.model.type === 'code')
                .reduce((n, c) => n + c.model.outputs.toJSON().filter(o => o.data && o.data['application/vnd.plotly.v1+json']).length, 0)""")
            assert n_figs >= 2, "notebook 01 shows at least the fill histogram and the strip picture"
            slider = p.page.locator(".jp-OutputArea-output .widget-hslider").first
            slider.wait_for(timeout=120 * MS)
            slider.scroll_into_view_if_needed()
            out_fig = ".widget-output .js-plotly-plot, .jupyter-widgets-output-area .js-plotly-plot"
            p.page.wait_for_selector(out_fig, timeout=120 * MS)
            figs = wait_all_figures_drawn(p, n_figs + 1, LAB_FIGURES)  # + the histogram inside the widget's output
            assert len(figs) == n_figs + 1, figs
            title_js = f"() => {{ const g = document.querySelector({json.dumps(out_fig)}); return g && g.layout && g.layout.title && g.layout.title.text; }}"
            assert "L = 2048" in (p.page.evaluate(title_js) or "")
            readout = slider.locator(".widget-readout")
            assert readout.inner_text().strip() == "2048"

            # move the slider: drag its handle three quarters along the track
            handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-target")
            hb, tb = handle.bounding_box(), track.bounding_box()
            p.page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
            p.page.mouse.down()
            p.page.mouse.move(tb["x"] + 0.75 * tb["width"], hb["y"] + hb["height"] / 2, steps=12)
            p.page.mouse.up()
            p.page.wait_for_function(f"() => document.querySelector({json.dumps('.jp-OutputArea-output .widget-hslider .widget-readout')}).textContent.trim() !== '2048'",
                                     timeout=30 * MS)
            new_L = int(readout.inner_text().strip())
            assert 4096 < new_L <= 8192 and new_L % 128 == 0, new_L
            p.page.wait_for_function(f"() => ({title_js})() && ({title_js})().includes('L = {new_L})')", timeout=300 * MS)
            assert len(wait_all_figures_drawn(p, n_figs + 1, LAB_FIGURES)) == n_figs + 1
            slider.scroll_into_view_if_needed()
            p.screenshot(shot)
        except BaseException:
            if not shot.exists():
                p.screenshot(artifacts / "jupyterlab_01_failure.png")
            print(f"[browser] JupyterLab log: {log_path}\n" + log_path.read_text()[-2000:])
            raise
        finally:
            p.close()
