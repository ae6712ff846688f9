"""Real JavaScript, Go and Rust code to mutate, from the registries we reach, and the shipped task sets.

    python -m minicoder.tasks.lang_sets all      # regenerates data/tasks/{javascript,go,rust}_tasks.jsonl

Sources (`SOURCES`), each a project that ships its own tests needing nothing beyond itself and the
toolchain (so they run offline in the sandbox):
  - npm packages that publish their tests, fetched with `npm pack` (tape suites: the Debian
    node-tape package is the test harness);
  - Go packages whose source and tests Debian ships (`golang-*-dev`, from /usr/share/gocode),
    fetched with `apt-get download` and unpacked with `dpkg-deb -x` (no install);
  - Rust crates whose source Debian ships (`librust-*-dev`, from /usr/share/cargo/registry), the
    same way.
Preparing a project only adds what the offline toolchain needs and the source lacks: a `go.mod`
when the package predates modules, a `Cargo.lock` (and an optional dependency that no test uses
removed from Cargo.toml, so Cargo can resolve offline). Nothing in the code or tests changes.

Each language's set is `pipeline.synth_mutate` over its subjects (tree-sitter operators,
`mutate_ts`), validated (the gold patch passes and the empty patch fails, as observed in the
sandbox; `--repeats 2` runs each twice and drops flaky tests) and QA'd; the ledger makes a rerun resume, the report says per language: candidates,
validated, dropped with reasons, tasks per minute. Downloads are cached under
``$MINICODER_CACHE/lang-sources`` (default ~/.cache/minicoder).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from minicoder.sandbox.images import cache_dir
from minicoder.tasks.mutate_ts import LangSubject, lang_repo_subject

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "data" / "tasks"


@dataclass(frozen=True)
class Source:
    language: str
    kind: str  # "npm" | "deb"
    spec: str  # npm spec (name@version) or Debian package name
    path: str = ""  # deb: the project folder inside the package (import path, or crate-version)
    exclude: tuple[str, ...] = ()  # files never mutated (helpers that live beside the tests)
    drop_tests: tuple[str, ...] = ()  # test entry points that only re-run the other test files

    @property
    def name(self) -> str:
        return self.spec.split("@")[0] if self.kind == "npm" else self.path.rsplit("/", 1)[-1]


SOURCES: dict[str, list[Source]] = {
    "javascript": [Source("javascript", "npm", "path-browserify@1.0.1", drop_tests=("test/index.js",)),
                   Source("javascript", "npm", "minimist@1.2.8")],
    "go": [Source("go", "deb", "golang-github-huandu-xstrings-dev", "github.com/huandu/xstrings"),
           Source("go", "deb", "golang-github-hashicorp-go-version-dev", "github.com/hashicorp/go-version"),
           Source("go", "deb", "golang-github-iancoleman-strcase-dev", "github.com/iancoleman/strcase"),
           Source("go", "deb", "golang-github-agnivade-levenshtein-dev", "github.com/agnivade/levenshtein")],
    "rust": [Source("rust", "deb", "librust-strsim-dev", "strsim-0.10.0"),
             Source("rust", "deb", "librust-semver-dev", "semver-1.0.14"),
             Source("rust", "deb", "librust-itoa-dev", "itoa-1.0.1")],
}
# per language: mutants tried per subject (the sets need >= 50 validated tasks each)
PER_SUBJECT = {"javascript": 35, "go": 20, "rust": 35}


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def fetch(src: Source, cache: Path | None = None) -> Path:
    """The prepared project folder of `src` (downloaded and unpacked once, then cached)."""
    base = (cache or cache_dir() / "lang-sources")
    dest = base / re.sub(r"[^\w.@-]+", "_", f"{src.kind}-{src.spec}")
    if (dest / ".ready").exists():
        return dest / "project"
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "dl").mkdir(parents=True)
    if src.kind == "npm":
        out = json.loads(_run(["npm", "pack", src.spec, "--json", "--pack-destination", str(dest / "dl")], cwd=dest))
        with tarfile.open(dest / "dl" / out[0]["filename"]) as tf:
            tf.extractall(dest / "dl", filter="data")
        shutil.move(dest / "dl" / "package", dest / "project")
    else:
        _run(["apt-get", "download", src.spec], cwd=dest / "dl")
        deb = next((dest / "dl").glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(dest / "dl" / "x")])
        root = "usr/share/gocode/src" if src.language == "go" else "usr/share/cargo/registry"
        shutil.copytree(dest / "dl" / "x" / root / src.path, dest / "project", symlinks=False)
    _prepare(src, dest / "project")
    shutil.rmtree(dest / "dl")
    (dest / ".ready").write_text(src.spec + "\n")
    return dest / "project"


def _prepare(src: Source, project: Path) -> None:
    for junk in ("debian", ".cargo-checksum.json", ".cargo_vcs_info.json", ".github", ".travis.yml"):
        p = project / junk
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if src.language == "go" and not (project / "go.mod").exists():
        (project / "go.mod").write_text(f"module {src.path}\n\ngo 1.19\n")
    if src.language == "rust":
        toml = (project / "Cargo.toml").read_text()
        # optional dependencies no test enables: Cargo resolves them even when unused, and offline
        # there is no registry to resolve them from
        toml = re.sub(r"\n\[dependencies\.(\w+)\]\nversion = \"[^\"]*\"\noptional = true\n(?:[a-z-]+ = [^\n]*\n)*",
                      "\n", toml)
        (project / "Cargo.toml").write_text(toml)
        _run(["cargo", "generate-lockfile", "--offline"], cwd=project,
             env={"PATH": "/usr/bin:/bin", "HOME": str(project), "CARGO_HOME": str(project / ".cargo-home")})
        shutil.rmtree(project / ".cargo-home", ignore_errors=True)


def subjects(language: str) -> list[LangSubject]:
    out = []
    for src in SOURCES[language]:
        s = lang_repo_subject(fetch(src), language, name=src.name, exclude=src.exclude)
        for t in src.drop_tests:  # an aggregator (`require`s every other test file): running it runs all twice
            s.files[t] = s.tests.pop(t)
        s.repo = src.path or src.spec
        s.metadata.update({"registry": "npm" if src.kind == "npm" else "debian", "package": src.spec})
        out.append(s)
    return out


def build_set(language: str, out: Path | None = None, *, per_subject: int | None = None, workers: int = 2,
              backend: str = "local", progress: bool = True, repeats: int = 1):
    """Mutate, execute, validate and QA one language's subjects into `out` (resumable)."""
    from minicoder.tasks.pipeline import synth_mutate

    out = out or DATA / f"{language}_tasks.jsonl"
    return synth_mutate(subjects(language), out, per_subject=per_subject or PER_SUBJECT[language], combine=1,
                        seed=0, validate=True, backend=backend, workers=workers, progress=progress, repeats=repeats,
                        command=f"lang_sets {language}")


def finish_from_ledger(language: str, out: Path | None = None, workers: int = 2):
    """Write the set and its report from what the ledger holds, running nothing more (for a run that
    was stopped). Candidates per minute are estimated from the ledger's per-candidate seconds."""
    from minicoder.tasks.pipeline import Ledger, _finish

    out = out or DATA / f"{language}_tasks.jsonl"
    ledger = Ledger(str(out) + ".ledger.jsonl")
    recs = ledger.candidates()
    busy = sum(r.get("seconds", 0.0) for r in recs) / max(workers, 1)
    s = _finish(f"lang_sets {language} (from the ledger)", out, ledger, len(recs), busy,
                sum(r.get("runs", 0) for r in recs), None, True, ["execute", "validate"])
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minicoder.tasks.lang_sets", description=__doc__.split("\n\n")[0])
    ap.add_argument("languages", nargs="*", default=["all"], help="'all' or some of javascript, go, rust")
    ap.add_argument("--out-dir", type=Path, default=DATA, help="where the <language>_tasks.jsonl files go")
    ap.add_argument("--per-subject", type=int, default=None, help="mutants tried per project")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="validation runs of the gold and empty patch (default 1:"
                    " the mutation stage's runs; 2 doubles the sandbox time and catches flaky tests)")
    ap.add_argument("--backend", choices=("local", "docker"), default="local")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--from-ledger", action="store_true",
                    help="only write the set and report from the ledger (after a stopped run); run nothing")
    args = ap.parse_args(argv)
    names = list(SOURCES) if args.languages in (["all"], []) else args.languages
    for lang in names:
        if lang not in SOURCES:
            ap.error(f"unknown language {lang!r}; choose from {', '.join(SOURCES)}")
        if args.from_ledger:
            print(f"== {lang}\n{finish_from_ledger(lang, args.out_dir / f'{lang}_tasks.jsonl', args.workers).table()}")
            continue
        s = build_set(lang, args.out_dir / f"{lang}_tasks.jsonl", per_subject=args.per_subject,
                      workers=args.workers, backend=args.backend, progress=not args.no_progress, repeats=args.repeats)
        print(f"== {lang}\n{s.table()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
