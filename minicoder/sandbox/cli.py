"""The sandbox stage's command line: `minicoder eval`, `minicoder cleanup`, `minicoder images`.

    minicoder eval --tasks tasks.jsonl --predictions preds.jsonl --backend local --workers 2 \
                   --out results.jsonl
    minicoder cleanup [--dead-only]
    minicoder images base [--rebuild] [--source auto|registry|offline]

`eval` grades predictions (SWE-bench convention) against tasks in sandboxes.

Predictions are JSONL rows `{"instance_id": ..., "model_patch": ...}` (extra fields are ignored).
Results are appended to `--out` one JSON line per instance *as each finishes* (flushed and synced),
so a killed run loses nothing, and re-running skips instances already in `--out` (the torn last line
of a killed run is dropped; a damaged line elsewhere stops the run with its line number). Ends with a
summary table (status counts, resolved rate, latency).

`cleanup` removes what sandboxes left behind after a crash or a kill -9: every Docker container
labelled `minicoder=1` (or, with `--dead-only`, only those whose owning process is gone), and local
sandbox folders whose owning process is gone. Without a Docker engine it cleans the local side and
says so.

`images base` makes sure the base task image exists, building it offline (debootstrap + `docker
import`) when no registry answers; `make docker` runs it.

The backend choice (`--backend local|docker`) is defined once here (`add_backend_argument`) for
every command that runs sandboxes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path


def add_backend_argument(p, *, auto: bool = False, default: str = "local") -> None:
    """`--backend`: the sandbox backends (`sandbox.base.BACKENDS`), plus "auto" (Docker when an
    engine answers, else local) where a command offers it."""
    from minicoder.sandbox.base import BACKENDS

    choices = ("auto", *BACKENDS) if auto else BACKENDS
    p.add_argument("--backend", choices=choices, default=default,
                   help=f"sandbox backend: {' | '.join(choices)} (default {default})")


def resolve_backend(choice: str) -> str:
    """"auto" -> "docker" when an engine answers and the base image is there (built if needed),
    else "local" (the embedded bubblewrap sandbox needs neither); other choices pass through."""
    if choice != "auto":
        return choice
    try:
        import docker

        docker.from_env(timeout=5).ping()
        from minicoder.sandbox.images import base_image, ensure_engine

        base_image(ensure_engine(start=False))
        return "docker"
    except Exception as e:  # no engine, or no base image: the embedded sandbox needs neither
        print(f"(no usable Docker engine: {type(e).__name__}; using the local bubblewrap sandbox)")
        return "local"


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="grade predictions against tasks in sandboxes (rewards from hidden tests)",
                              description="Grade predictions (SWE-bench convention) against tasks in sandboxes.")
    p.add_argument("--tasks", required=True, help="tasks JSONL (or an HF datasets folder)")
    p.add_argument("--predictions", required=True, help="JSONL of {instance_id, model_patch}")
    add_backend_argument(p)
    p.add_argument("--workers", type=int, default=1, help="evaluations in parallel")
    p.add_argument("--out", required=True, help="results JSONL (appended; finished instances are skipped)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per test run (default: each task's own)")
    p.add_argument("--memory-mb", type=int, default=2048)
    p.add_argument("--pids", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def read_predictions(path: str) -> dict[str, str]:
    from minicoder.errors import UserError

    preds: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--predictions: no such file: {path}")
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p.name} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("instance_id"), str):
                raise UserError(f"{p.name} line {lineno}: expected an object with a string 'instance_id'")
            patch = row.get("model_patch")
            if patch is not None and not isinstance(patch, str):
                raise UserError(f"{p.name} line {lineno}: 'model_patch' must be a string or null")
            if row["instance_id"] in preds:
                raise UserError(f"{p.name} line {lineno}: duplicate instance_id {row['instance_id']!r}")
            preds[row["instance_id"]] = patch or ""
    return preds


def finished_ids(path: str) -> set[str]:
    """Instance ids already in a results file. Run `_repair_tail` first: a torn last line is a killed
    run's and is dropped there; a damaged line anywhere else is an error that names it."""
    from minicoder.errors import UserError

    done: set[str] = set()
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{Path(path).name} line {lineno}: not valid JSON; fix or delete that line "
                                "(the instance is then evaluated again)") from None
            if isinstance(row, dict) and "instance_id" in row:
                done.add(row["instance_id"])
    return done


def _repair_tail(path: str) -> None:
    """Drop a partial last line left by a killed run, so appends start on a fresh line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.seek(cut)
        fh.truncate()


def summary_table(rows: list[dict]) -> str:
    from minicoder.sandbox.status import Status

    if not rows:
        return "no results"
    counts = Counter(Status(r["status"]) for r in rows)
    n = len(rows)
    resolved = sum(r["reward"] == 1.0 for r in rows)
    durs = sorted(r["duration_s"] for r in rows)
    lines = [f"{'status':<18}{'count':>7}{'share':>9}", "-" * 34]
    for status, c in counts.most_common():
        lines.append(f"{status:<18}{c:>7}{c / n:>9.1%}")
    lines += ["-" * 34, f"{'resolved':<18}{resolved:>7}{resolved / n:>9.1%}",
              f"mean fraction of tests passed: {sum(r['fraction'] for r in rows) / n:.3f}",
              f"latency: median {durs[n // 2]:.2f}s, max {durs[-1]:.2f}s"]
    return "\n".join(lines)


def run_eval(args) -> int:
    from tqdm import tqdm

    from minicoder.errors import UserError
    from minicoder.record import TaskFormatError, read_tasks
    from minicoder.sandbox.base import Limits, SandboxError
    from minicoder.sandbox.reward import evaluate

    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    try:
        tasks = {t.instance_id: t for t in read_tasks(args.tasks)}
    except TaskFormatError as e:
        raise UserError(str(e)) from None
    if not tasks:
        raise UserError(f"--tasks {args.tasks}: no tasks")
    preds = read_predictions(args.predictions)
    unknown = sorted(set(preds) - set(tasks))
    if unknown:
        raise UserError(f"{len(unknown)} prediction(s) name no task in {args.tasks}, e.g. {unknown[0]!r}")
    if args.backend == "docker":
        try:
            from minicoder.sandbox.docker import client

            client()
        except SandboxError as e:
            raise UserError(f"--backend docker: {e}") from None
    _repair_tail(args.out)
    done = finished_ids(args.out)
    todo = [i for i in preds if i not in done]
    print(f"{len(preds)} predictions, {len(done & set(preds))} already in {args.out}, {len(todo)} to evaluate "
          f"({args.backend} backend, {args.workers} worker(s))")
    lock = threading.Lock()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 -- kept open across threads, closed below

    def one(iid: str) -> dict:
        t = tasks[iid]
        limits = Limits(timeout_s=args.timeout or t.environment.timeout_s, memory_mb=args.memory_mb, pids=args.pids)
        row = evaluate(t, preds[iid], backend=args.backend, limits=limits).to_dict()
        with lock:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        return row

    rows: list[dict] = []
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=args.workers)
    try:
        with tqdm(total=len(todo), desc="eval", unit="task", disable=args.quiet) as bar:
            pending = {pool.submit(one, iid) for iid in todo}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    row = f.result()
                    rows.append(row)
                    bar.update(1)
                    bar.set_postfix(resolved=sum(r["reward"] == 1.0 for r in rows))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        out.close()
        if args.backend == "docker":
            from minicoder.sandbox.docker import shutdown_pools

            shutdown_pools()
    wall = time.perf_counter() - t0
    print(summary_table(rows))
    if rows:
        print(f"{len(rows)} evaluated in {wall:.1f}s ({len(rows) / wall:.2f} evaluations/s); results: {args.out}")
    return 0


# --- cleanup ---------------------------------------------------------------------------------------

def add_cleanup_parser(subparsers) -> None:
    p = subparsers.add_parser("cleanup", help="remove leftover sandbox containers and folders",
                              description="Remove what sandboxes left behind after a crash or a kill -9.")
    p.add_argument("--dead-only", action="store_true",
                   help="only containers whose owning process is dead (safe while other runs are going)")
    p.set_defaults(func=run_cleanup)


def run_cleanup(args) -> int:
    from minicoder.sandbox.base import SandboxError, reap_stale_roots

    roots = reap_stale_roots()
    print(f"local: removed {roots} stale sandbox folder(s)")
    try:
        from minicoder.sandbox.docker import cleanup, client

        n = cleanup(client(), dead_only=args.dead_only)
        print(f"docker: removed {n} container(s)" + (" of dead owners" if args.dead_only else " labelled minicoder=1"))
    except SandboxError as e:
        print(f"docker: skipped ({e})")
    return 0


# --- images ----------------------------------------------------------------------------------------

def add_images_parser(subparsers) -> None:
    from minicoder.record import DEFAULT_IMAGE

    p = subparsers.add_parser("images", help="build the Docker images task sandboxes run in",
                              description="Build the Docker images minicoder's task sandboxes run in.")
    sub = p.add_subparsers(dest="what", required=True, metavar="IMAGE")
    b = sub.add_parser("base", help=f"make sure the base task image {DEFAULT_IMAGE} exists (build it if not)")
    b.add_argument("--rebuild", action="store_true", help="rebuild even if it exists (and redo the rootfs)")
    b.add_argument("--source", choices=["auto", "registry", "offline"], default=None,
                   help="FROM the registry's python image, or debootstrap offline (default auto)")
    b.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    b.add_argument("--no-start", action="store_true", help="do not try to start an engine when none answers")
    b.set_defaults(func=run_images)


def run_images(args) -> int:
    import re
    import sys

    from minicoder.errors import UserError
    from minicoder.sandbox import images

    repo, _, version = args.tag.rpartition(":") if ":" in args.tag else (args.tag, "", "latest")
    if not images.valid_repository(repo) or not re.fullmatch(r"[\w][\w.-]{0,127}", version):
        raise UserError(f"--tag {args.tag!r} is not a valid image name (like minicoder/python:3.11)")
    t0 = time.perf_counter()
    try:
        client = images.ensure_engine(start=not args.no_start)
        existed = images.image_exists(client, args.tag) and (
            images.image_labels(client, args.tag).get(images.RECIPE_LABEL) == images.base_recipe_hash())
        images.base_image(client, args.tag, rebuild=args.rebuild, source=args.source)
        found = images.verify_image(client, args.tag)
    except (images.DockerUnavailable, images.ImageBuildError, ValueError) as e:
        print(f"minicoder images: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the SDK's own errors (docker.errors.*, requests' time-outs): one line too
        if not type(e).__module__.startswith(("docker", "requests", "urllib3")):
            raise
        print(f"minicoder images: error: the Docker engine failed or did not answer: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    img = client.images.get(args.tag)
    what = "already up to date" if existed and not args.rebuild else "built"
    print(
        f"{args.tag} {what} in {dt:.1f}s: {img.short_id}, {img.attrs['Size'] / 2**20:.0f} MiB, "
        f"from {img.labels.get('minicoder.base-source', '?')}; python {found['python']}, "
        f"{found['pytest']}, {found['git']}"
    )
    return 0
