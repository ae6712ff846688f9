"""Benchmark: sandbox evaluations and sessions at RL speed, both backends, against their bare floors.

For two real tasks -- the calc task (`sandbox.examples.demo_task`, 7 tests) and a HumanEval-derived
seed task (`data/tasks/seed_tasks.jsonl`) -- measured side by side in one run:
  - floors: a bare `bwrap ... python -c pass` (the local backend's process start), a bare
    `bwrap ... python -m pytest` on the same tests in a prepared workspace with no protections, and a
    bare `docker exec` of the same two commands into a running container (the docker floors);
  - per-evaluation latency (median, p90) of `evaluate` on the warm runner and on the cold path, and of
    a session's `exec` of `python3 -c pass`;
  - evaluations/s at 1, 2 and 4 workers for `evaluate` (threads), `evaluate_many`, the cold path, and
    session execs/s;
  - where the time of one evaluation goes (sandbox start, workspace, patch + defences, copy-in, the
    test process and, inside it, interpreter + pytest import, report parsing, clean-up);
  - CPU seconds per evaluation, counted by a cpuacct cgroup holding this process and everything it
    starts (plus the warm container's own cgroup for docker), and from it the evaluations/s an idle
    2-core machine would reach (2 / CPU seconds, the CPU-bound ceiling). This machine is shared: wall
    numbers depend on the load average, which the JSON records at start and end; the CPU cost much less.
  - `--soak N`: N evaluations through `evaluate_many`, 20% hostile (the catalogue, cycled): every result
    recorded, no unexpected reward, no stray process, no container left.

Targets (issue 10, idle 2-core machine): >= 20 evals/s with 2 workers (local), >= 10 (docker); session
exec <= 1.5x the backend's bare process start; evaluate <= 1.3x the bare-pytest floor.

Run: `.venv/bin/python bench/sandbox.py [--backends local,docker] [--n 12] [--soak 500]`
-> bench/results/sandbox.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from minicoder.machine import machine_info  # noqa: E402
from minicoder.record import read_tasks  # noqa: E402
from minicoder.sandbox.base import Limits  # noqa: E402
from minicoder.sandbox.examples import demo_task, hostile_patches  # noqa: E402
from minicoder.sandbox.host import pids_of_uid  # noqa: E402
from minicoder.sandbox.reward import evaluate, evaluate_many  # noqa: E402
from minicoder.sandbox.session import open_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LIMITS = Limits(memory_mb=512, pids=128, file_size_mb=8, tmp_mb=64, disk_mb=128, timeout_s=30)
PASS = ["python3", "-c", "pass"]


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "median_s": statistics.median(xs), "p90_s": xs[int(0.9 * (len(xs) - 1))]}


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class CpuMeter:
    """CPU seconds of this process tree (a cpuacct cgroup we move into) and of extra cgroups."""

    def __init__(self):
        self.path = Path(f"/sys/fs/cgroup/cpuacct/minicoder-bench-{os.getpid()}")
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
            self.ok = True
        except OSError:
            self.ok = False
        self.extra: list[Path] = []

    def read(self) -> float | None:
        if not self.ok:
            return None
        total = int((self.path / "cpuacct.usage").read_text())
        for p in self.extra:
            with contextlib.suppress(OSError):
                total += int((p / "cpuacct.usage").read_text())
        return total / 1e9

    def close(self) -> None:
        if self.ok:
            Path("/sys/fs/cgroup/cpuacct/cgroup.procs").write_text(str(os.getpid()))
            for _ in range(50):
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def seed_task():
    tasks = read_tasks(ROOT / "data" / "tasks" / "seed_tasks.jsonl")
    return tasks[0]


def prepared_workspace(task, backend):
    """A cold sandbox with the gold patch and hidden tests in place (for the floors)."""
    from minicoder.sandbox.patching import apply_patch, protect

    if backend == "local":
        from minicoder.sandbox.local import BwrapSandbox

        sb = BwrapSandbox(LIMITS)
    else:
        from minicoder.sandbox.docker import DockerSandbox

        sb = DockerSandbox(LIMITS)
    sb.prepare(task)
    pr = apply_patch(sb.workspace, task.patch)
    protect(sb.workspace, pr.changed, task.test_patch, task.FAIL_TO_PASS + task.PASS_TO_PASS)
    sb.finalize_workspace()
    return sb


def floors(task, backend, n) -> dict:
    ids = list(dict.fromkeys(task.FAIL_TO_PASS + task.PASS_TO_PASS))
    pytest_cmd = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids]
    sb = prepared_workspace(task, backend)
    try:
        if backend == "local":
            kw = {"user": sb.uid, "group": sb.gid, "extra_groups": []} if os.geteuid() == 0 else {}

            def bare(cmd):
                p = subprocess.run(sb._bwrap_argv(cmd, sb.base_env()), capture_output=True, **kw)
                assert p.returncode == 0, p.stdout[-400:]
        else:
            def bare(cmd):
                p = subprocess.run(["docker", "exec", "-u", "1000:1000", "-w", "/workspace", sb.container.id, *cmd],
                                   capture_output=True)
                assert p.returncode == 0, p.stdout[-400:]
        return {"process_start": stats(timed(lambda: bare(PASS), n)), "pytest": stats(timed(lambda: bare(pytest_cmd), n))}
    finally:
        sb.close()


def breakdown(task, backend, runner, n) -> dict:
    """Mean seconds per phase of one evaluation, phase by phase as run_tests runs them."""
    from minicoder.sandbox import reward as R
    from minicoder.sandbox.patching import protect

    phases: dict[str, list[float]] = {}

    def mark(name, t0):
        phases.setdefault(name, []).append(time.perf_counter() - t0)
        return time.perf_counter()

    ids = list(dict.fromkeys(task.FAIL_TO_PASS + task.PASS_TO_PASS))
    for _ in range(n):
        t = time.perf_counter()
        cm = R.open_sandbox(backend, task, LIMITS, runner)
        sb = cm.__enter__()
        t = mark("sandbox start", t)
        sb.prepare(task)
        t = mark("workspace copy", t)
        pr = sb.apply_patch(task.patch)
        protect(sb.workspace, pr.changed, task.test_patch, ids)
        t = mark("patch + defences (git)", t)
        sb.finalize_workspace()
        t = mark("copy-in / re-own", t)
        name = "bench.xml"
        argv = R.runner_argv(task, ids, f"{R.REPORT_DIR}/{name}")
        res = sb.run_python(R.RUNNER, argv[4:]) if getattr(sb, "warm", False) else sb.run(argv)
        t = mark("test process", t)
        tr = R.TestRun(status="error")
        R._judge(tr, res, R._read_report(sb, name))
        assert tr.status == "ok", (tr.status, tr.message)
        t = mark("report parse", t)
        cm.__exit__(None, None, None)
        mark("clean-up", t)
    out = {k: statistics.fmean(v) for k, v in phases.items()}
    if runner == "cold":  # inside the test process: what starting Python and importing pytest cost
        sb = prepared_workspace(task, backend)
        try:
            imp = statistics.median([sb.run(["python3", "-I", "-c", R.RUNNER_PRELUDE]).duration_s for _ in range(n)])
            bare = statistics.median([sb.run(PASS).duration_s for _ in range(n)])
        finally:
            sb.close()
        out["  of which: interpreter start"] = bare
        out["  of which: pytest import"] = max(0.0, imp - bare)
    return out


def throughput(fn, workers: int, n: int, meter: CpuMeter) -> dict:
    c0 = meter.read()
    t0 = time.perf_counter()
    fn(workers, n)
    wall = time.perf_counter() - t0
    c1 = meter.read()
    cpu = None if c0 is None else (c1 - c0) / n
    return {"per_s": n / wall, "cpu_s_each": cpu}


def bench_task(task, backend, args, meter) -> dict:
    from minicoder.sandbox.warm import get_zygote

    gold = task.patch
    evaluate(task, gold, backend=backend, limits=LIMITS)  # warm-up: runtime / image / zygote
    evaluate(task, gold, backend=backend, limits=LIMITS, runner="cold")
    z = get_zygote(backend, task, LIMITS)
    if backend == "docker" and z.container is not None:
        meter.extra = [Path(f"/sys/fs/cgroup/cpuacct/docker/{z.container.id}")]
    n = args.n
    e: dict = {"floors": floors(task, backend, n)}

    def ok(r):
        assert r.status == "resolved", (r.status, r.message)

    e["latency"] = {
        "evaluate (warm)": stats(timed(lambda: ok(evaluate(task, gold, backend=backend, limits=LIMITS)), n)),
        "evaluate (cold)": stats(timed(lambda: ok(evaluate(task, gold, backend=backend, limits=LIMITS, runner="cold")), n)),
    }
    with open_session(task, backend=backend, limits=LIMITS) as s:
        s.exec(PASS)
        e["latency"]["session exec"] = stats(timed(lambda: s.exec(PASS), 2 * n))
        e["latency"]["session pytest (warm)"] = stats(timed(lambda: s.pytest(["-q", "-p", "no:cacheprovider"]), n))

    def ev_threads(runner):
        def go(w, k):
            with ThreadPoolExecutor(w) as ex:
                rs = list(ex.map(lambda _: evaluate(task, gold, backend=backend, limits=LIMITS, runner=runner), range(k)))
            assert all(r.status == "resolved" for r in rs)
        return go

    def ev_many(w, k):
        rs = evaluate_many(task, [gold] * k, backend=backend, workers=w, limits=LIMITS)
        assert all(r.status == "resolved" for r in rs)

    def sess(w, k):
        sessions = [open_session(task, backend=backend, limits=LIMITS) for _ in range(w)]
        try:
            with ThreadPoolExecutor(w) as ex:
                list(ex.map(lambda i: sessions[i % w].exec(PASS), range(k)))
        finally:
            for s in sessions:
                s.close()

    tn = args.throughput_n
    e["throughput"] = {name: {w: throughput(fn, w, tn, meter) for w in (1, 2, 4)} for name, fn in (
        ("evaluate (warm)", ev_threads(None)), ("evaluate_many", ev_many), ("evaluate (cold)", ev_threads("cold")),
        ("session exec", sess))}
    e["breakdown"] = {r: breakdown(task, backend, r, max(3, n // 3)) for r in ("warm", "cold")}
    fl = e["floors"]
    lat = e["latency"]
    cpu2 = e["throughput"]["evaluate_many"][2]["cpu_s_each"]
    e["ratios"] = {
        "evaluate (warm) / bare pytest": lat["evaluate (warm)"]["median_s"] / fl["pytest"]["median_s"],
        "evaluate (cold) / bare pytest": lat["evaluate (cold)"]["median_s"] / fl["pytest"]["median_s"],
        "session exec / bare process start": lat["session exec"]["median_s"] / fl["process_start"]["median_s"],
    }
    need = 20.0 if backend == "local" else 10.0
    e["targets"] = {
        f"evaluate_many >= {need:.0f}/s at 2 workers (measured, this load)": e["throughput"]["evaluate_many"][2]["per_s"] >= need,
        f"evaluate_many >= {need:.0f}/s at 2 workers (projected idle, 2 / CPU s)": cpu2 is not None and 2 / cpu2 >= need,
        "session exec <= 1.5x bare process start": e["ratios"]["session exec / bare process start"] <= 1.5,
        "evaluate <= 1.3x bare pytest": e["ratios"]["evaluate (warm) / bare pytest"] <= 1.3,
    }
    if cpu2:
        e["projected_idle_2core_evals_per_s"] = 2 / cpu2
    return e


def soak(task, backend, n, workers) -> dict:
    import minicoder.sandbox.local as L

    attacks = hostile_patches()
    names = sorted(attacks)
    uids: list[int] = []
    real = L.pick_uid

    def pick():
        uids.append(real())
        return uids[-1]

    L.pick_uid = pick
    jobs = [(names[(i // 5) % len(names)] if i % 5 == 4 else "gold") for i in range(n)]
    short = {"infinite_loop", "sleep"}
    t0 = time.perf_counter()
    results: dict[int, object] = {}
    try:  # two batches: the attacks that can only end by their timeout get a short one
        for group, timeout in (([i for i, j in enumerate(jobs) if j in short], 4.0),
                               ([i for i, j in enumerate(jobs) if j not in short], None)):
            patches = [task.patch if jobs[i] == "gold" else attacks[jobs[i]].patch for i in group]
            for i, r in zip(group, evaluate_many(task, patches, backend=backend, workers=workers, limits=LIMITS,
                                                 timeout_s=timeout, progress=True), strict=True):
                results[i] = r
    finally:
        L.pick_uid = real
    wall = time.perf_counter() - t0
    wrong = []
    for i, name in enumerate(jobs):
        r = results[i]
        want_ok = r.reward == 1.0 if name == "gold" else (r.reward == attacks[name].expect_reward
                                                            and r.status in attacks[name].expect_status)
        if not want_ok:
            wrong.append((name, r.status, r.message[:160]))
    left = [p for u in uids if u != os.getuid() for p in pids_of_uid(u)]
    containers = None
    if backend == "docker":
        from minicoder.sandbox import docker as D
        from minicoder.sandbox.warm import shutdown_zygotes

        shutdown_zygotes()
        D.flush_pools()
        handed = {cid for pool in list(D._pools.values()) for cid in pool.handed_out}
        me = D.owner_tag()
        containers = len([c for c in D.labelled_containers() if c.id in handed
                          or (c.labels or {}).get(D.OWNER_LABEL) == me and (c.labels or {}).get(D.ROLE_LABEL) == "warm"])
    statuses: dict[str, int] = {}
    for r in results.values():
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {"n": n, "hostile": sum(j != "gold" for j in jobs), "recorded": len(results), "workers": workers,
            "wall_s": wall, "evals_per_s": n / wall, "statuses": statuses, "n_unexpected": len(wrong),
            "unexpected": wrong[:20], "stray_processes_after": len(left), "containers_left_after": containers}


def print_table(res: dict) -> None:
    print(f"\nload average at start {res['machine']['load_average_at_start']}, at end {res['machine']['load_average_end']}"
          f" ({res['machine']['cpu_count']} cores)")
    for key, e in res["runs"].items():
        fl, lat, th = e["floors"], e["latency"], e["throughput"]
        print(f"\n== {key}   floors: process start {fl['process_start']['median_s'] * 1e3:.0f} ms, "
              f"bare pytest {fl['pytest']['median_s'] * 1e3:.0f} ms")
        print(f"{'':24}{'median':>9}{'p90':>9}{'1 w/s':>8}{'2 w/s':>8}{'4 w/s':>8}{'CPU s/eval':>11}")
        for name in ("evaluate (warm)", "evaluate_many", "evaluate (cold)", "session exec"):
            lt = lat.get(name) or lat.get("evaluate (warm)" if name == "evaluate_many" else name)
            t = th[name]
            cpu = t[2]["cpu_s_each"]
            print(f"{name:<24}{lt['median_s'] * 1e3:>7.0f}ms{lt['p90_s'] * 1e3:>7.0f}ms"
                  f"{t[1]['per_s']:>8.1f}{t[2]['per_s']:>8.1f}{t[4]['per_s']:>8.1f}"
                  f"{'' if cpu is None else f'{cpu:.3f}':>11}")
        print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in e["ratios"].items()))
        if "projected_idle_2core_evals_per_s" in e:
            print(f"projected idle 2-core evaluate_many: {e['projected_idle_2core_evals_per_s']:.1f} evals/s")
        print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in e["targets"].items()))
        for runner, ph in e["breakdown"].items():
            print(f"breakdown ({runner}): " + ", ".join(f"{k.strip()} {v * 1e3:.0f}ms" for k, v in ph.items()))
        if "soak" in e:
            s = e["soak"]
            print(f"soak: {s['recorded']}/{s['n']} recorded ({s['hostile']} hostile), {s['n_unexpected']} unexpected, "
                  f"stray processes {s['stray_processes_after']}, containers left {s['containers_left_after']}, "
                  f"{s['evals_per_s']:.2f} evals/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="local,docker")
    ap.add_argument("--tasks", default="calc,humaneval")
    ap.add_argument("--n", type=int, default=12, help="runs per latency measurement")
    ap.add_argument("--throughput-n", type=int, default=16)
    ap.add_argument("--soak", type=int, default=0, help="soak N evaluations (20%% hostile) per backend, calc task")
    ap.add_argument("--soak-workers", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "sandbox.json"))
    args = ap.parse_args()
    info = machine_info(("docker", "pytest"))
    info["bwrap"] = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    if shutil.which("docker"):
        info["docker_server"] = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                               capture_output=True, text=True).stdout.strip() or None
    tasks = {"calc": demo_task(timeout_s=30), "humaneval": seed_task()}
    res: dict = {"machine": info, "limits": LIMITS.__dict__, "tasks": {k: v.instance_id for k, v in tasks.items()},
                 "runs": {}}
    meter = CpuMeter()
    try:
        for b in [b for b in args.backends.split(",") if b]:
            for tname in [t for t in args.tasks.split(",") if t]:
                print(f"== {b} / {tname}", flush=True)
                res["runs"][f"{b} / {tname}"] = bench_task(tasks[tname], b, args, meter)
            if args.soak:
                print(f"   soak {args.soak} ...", flush=True)
                res["runs"][f"{b} / {next(iter(t for t in args.tasks.split(',') if t))}"]["soak"] = soak(
                    tasks["calc"], b, args.soak, args.soak_workers)
            meter.extra = []
    finally:
        meter.close()
        from minicoder.sandbox.docker import shutdown_pools
        from minicoder.sandbox.warm import shutdown_zygotes

        shutdown_zygotes()
        shutdown_pools()
    res["machine"]["load_average_end"] = list(os.getloadavg())
    print_table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
