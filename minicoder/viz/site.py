"""`make site`: execute the notebooks and export each to an HTML page that reads without a kernel.

    python -m minicoder.viz.site [--out site] [--notebooks notebooks] [--only 01_data_and_packing]

Figures: the notebooks' plotly figures carry their own text/html view with plotly.js inlined once
per notebook (`minicoder.viz.notebook`), so nbconvert's page shows them as they are. Widgets:
nbclient saves the ipywidgets state in the notebook; the page renders it with the ipywidgets HTML
manager (`@jupyter-widgets/html-manager`'s standalone ``embed.js``), which this script fetches once
with npm into ``.cache/site/`` and copies to ``<out>/_static/`` (no CDN at reading time). The
template (`site_template/`) drops require.js and MathJax, which nbconvert would load from a CDN.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HTML_MANAGER = "@jupyter-widgets/html-manager@1.0.14"
TEMPLATE_DIR = Path(__file__).resolve().parent / "site_template"


def widget_assets(cache: Path = ROOT / ".cache" / "site") -> Path:
    """The html-manager's dist/ folder (embed.js + fonts), fetched with `npm pack` once."""
    dist = cache / "html-manager" / "package" / "dist"
    if (dist / "embed.js").is_file():
        return dist
    cache.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed once to fetch the ipywidgets HTML manager (apt-get install npm)")
    proc = subprocess.run([npm, "pack", HTML_MANAGER, "--silent", "--pack-destination", str(cache)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"npm pack {HTML_MANAGER} failed: {proc.stderr.strip()[-400:]}")
    tgz = cache / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tf:
        tf.extractall(cache / "html-manager", filter="data")
    return dist


def export(nb_path: Path, out_dir: Path, execute: bool = True, timeout: int = 900) -> tuple[Path, float]:
    """Execute (in the notebook's folder, MINICODER_CI=1) and export one notebook; returns (page, seconds)."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(nb_path, as_version=4)
    t0 = time.perf_counter()
    if execute:
        os.environ.setdefault("MINICODER_CI", "1")
        NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    exporter = HTMLExporter(template_name="minicoder_site", extra_template_basedirs=[str(TEMPLATE_DIR)])
    exporter.widget_renderer_url = "_static/embed.js"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb_path.stem}})
    page = out_dir / f"{nb_path.stem}.html"
    page.write_text(body, encoding="utf-8")
    return page, seconds


def build(notebooks: Path, out: Path, only: list[str] | None = None, execute: bool = True) -> list[tuple[Path, float]]:
    out.mkdir(parents=True, exist_ok=True)
    static = out / "_static"
    static.mkdir(exist_ok=True)
    dist = widget_assets()
    for f in dist.iterdir():
        if f.suffix in (".js", ".woff", ".woff2", ".ttf", ".eot", ".svg") or f.name.endswith(".LICENSE.txt"):
            shutil.copy2(f, static / f.name)
    pages = []
    for nb in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        if only and nb.stem not in only and nb.stem[:2] not in only:
            continue
        page, s = export(nb, out, execute=execute)
        print(f"site: {nb.name} -> {page} ({s:.0f}s)")
        pages.append((page, s))
    items = "\n".join(f'<li><a href="{p.name}">{p.stem}</a> ({s:.0f}s to run on this machine)</li>' for p, s in pages)
    (out / "index.html").write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>minicoder course</title>"
                                    f"</head><body><h1>minicoder: the course</h1><ol>{items}</ol></body></html>\n")
    return pages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minicoder.viz.site", description=__doc__.split("\n\n")[0])
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    p.add_argument("--out", type=Path, default=ROOT / "site")
    p.add_argument("--only", nargs="*", help="notebook stems or numbers (default: all)")
    p.add_argument("--no-execute", action="store_true", help="export the notebooks as they are")
    args = p.parse_args(argv)
    pages = build(args.notebooks, args.out, args.only, execute=not args.no_execute)
    print(f"site: {len(pages)} pages in {args.out}/ (open {args.out / 'index.html'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
