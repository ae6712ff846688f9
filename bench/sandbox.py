"""Benchmark: sandbox evaluation latency and throughput, both backends, against their bare floors.

For the tiny real task (`minicoder.sandbox.examples.demo_task`, 7 pytest tests), with the gold patch:
  - latency per evaluation (`evaluate`: fresh workspace, patch, hidden tests, pytest, JUnit parse);
  - the floor measured in the same run: the same pytest run by a bare `bwrap` (local) and by a
    bare `docker exec` into an already running container (docker), with no workspace preparation,
    patching or report parsing;
  - throughput (evaluations/s) at 1, 2 and 4 workers.
  - `--soak N`: N evaluations with 20% hostile patches (the catalogue in examples.py, cycled),
    then checks that every result was recorded, that no container this process handed out still
    exists and that no sandbox process is left.

Targets: docker latency <= 1.5x the bare `docker exec`; >= 10 evaluations/s on 2 cores (local);
the soak leaves zero containers and zero stray processes. The JSON records whether each was met
and the machine's load (this machine is shared; other jobs inflate every number alike).

Run: `.venv/bin/python bench/sandbox.py [--backends local,docker] [--n 20] [--soak 500]`
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

from minicoder.machine import machine_info as _machine_info  # noqa: E402
from minicoder.sandbox.base import Limits  # noqa: E402
from minicoder.sandbox.examples import demo_task, hostile_patches  # noqa: E402
from minicoder.sandbox.host import pids_of_uid  # noqa: E402
from minicoder.sandbox.reward import evaluate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIMITS = Limits(memory_mb=512, pids=128, file_size_mb=8, tmp_mb=64, disk_mb=128, timeout_s=30)


def machine() -> dict:
    info = _machine_info(("docker",))
    try:
        info["bwrap"] = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["bwrap"] = None
    if shutil.which("docker"):
        p = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
        info["docker_server"] = p.stdout.strip() or None
    return info

def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "median_s": statistics.median(xs), "p90_s": xs[int(0.9 * (len(xs) - 1))],
            "mean_s": statistics.fmean(xs), "min_s": xs[0]}


def test_ids(task) -> list[str]:
    return task.FAIL_TO_PASS + task.PASS_TO_PASS


def floor_local(task, n: int) -> list[float]:
    """A bare bubblewrap run of the same pytest in a prepared, patched workspace."""
    from minicoder.sandbox.local import BwrapSandbox
    from minicoder.sandbox.patching import apply_patch, protect

    sb = BwrapSandbox(LIMITS)
    try:
        sb.prepare(task)
        pr = apply_patch(sb.workspace, task.patch)
        protect(sb.workspace, pr.changed, task.test_patch, test_ids(task))
        sb.finalize_workspace()
        argv = sb._bwrap_argv(["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_ids(task)],
                              sb.base_env())
        kw = {"user": sb.uid, "group": sb.gid, "extra_groups": []} if os.geteuid() == 0 else {}
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            p = subprocess.run(argv, capture_output=True, **kw)
            out.append(time.perf_counter() - t0)
            assert p.returncode == 0, p.stdout[-500:]
        return out
    finally:
        sb.close()


def floor_docker(task, n: int) -> dict[str, list[float]]:
    """`docker exec` (CLI, and the SDK call our backend makes) of the same pytest in a running container."""
    from minicoder.sandbox.docker import DockerSandbox
    from minicoder.sandbox.patching import apply_patch, protect

    sb = DockerSandbox(LIMITS)
    try:
        sb.prepare(task)
        pr = apply_patch(sb.workspace, task.patch)
        protect(sb.workspace, pr.changed, task.test_patch, test_ids(task))
        sb.finalize_workspace()
        cmd = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_ids(task)]
        cli, sdk = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            p = subprocess.run(["docker", "exec", "-u", "1000:1000", "-w", "/workspace", sb.container.id, *cmd],
                               capture_output=True)
            cli.append(time.perf_counter() - t0)
            assert p.returncode == 0, p.stdout[-500:]
            t0 = time.perf_counter()
            code, _ = sb.container.exec_run(cmd, user="1000:1000", workdir="/workspace")
            sdk.append(time.perf_counter() - t0)
            assert code == 0
        return {"docker_exec_cli": cli, "docker_exec_sdk": sdk}
    finally:
        sb.close()


def eval_latency(task, backend: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = evaluate(task, task.patch, backend=backend, limits=LIMITS)
        out.append(time.perf_counter() - t0)
        assert r.status == "resolved", (r.status, r.message)
    return out


def throughput(task, backend: str, workers: int, n: int) -> float:
    with ThreadPoolExecutor(workers) as ex:
        t0 = time.perf_counter()
        rs = list(ex.map(lambda _: evaluate(task, task.patch, backend=backend, limits=LIMITS), range(n)))
        dt_ = time.perf_counter() - t0
    assert all(r.status == "resolved" for r in rs), {r.status for r in rs}
    return n / dt_


def soak(task, backend: str, n: int, workers: int) -> dict:
    import minicoder.sandbox.local as L

    attacks = hostile_patches()
    names = sorted(attacks)
    uids: list[int] = []
    real_pick = L.pick_uid

    def pick():
        uids.append(real_pick())
        return uids[-1]

    L.pick_uid = pick
    jobs = []
    for i in range(n):
        if i % 5 == 4:  # 20% hostile
            name = names[(i // 5) % len(names)]
            jobs.append((name, attacks[name]))
        else:
            jobs.append(("gold", None))

    def one(job):
        name, attack = job
        patch = task.patch if attack is None else attack.patch
        timeout = 4.0 if name in ("infinite_loop", "sleep") else None
        r = evaluate(task, patch, backend=backend, limits=LIMITS, timeout_s=timeout)
        ok = (r.reward == 1.0) if attack is None else (r.reward == attack.expect_reward and r.status in attack.expect_status)
        return name, r.status, ok, r.message[:160]

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(workers) as ex:
            rows = list(ex.map(one, jobs))
    finally:
        L.pick_uid = real_pick
    wall = time.perf_counter() - t0
    left_procs = [p for u in uids if u != os.getuid() for p in pids_of_uid(u)]
    left_containers = None
    if backend == "docker":
        from minicoder.sandbox import docker as D

        D.flush_pools()
        handed = {cid for pool in list(D._pools.values()) for cid in pool.handed_out}
        left_containers = len([c for c in D.labelled_containers(role="sandbox") if c.id in handed])
    wrong = [(name, status, msg) for name, status, ok, msg in rows if not ok]
    statuses: dict[str, int] = {}
    for _, s, _, _ in rows:
        statuses[s] = statuses.get(s, 0) + 1
    return {"backend": backend, "n": n, "hostile": sum(1 for j in jobs if j[1] is not None), "recorded": len(rows),
            "workers": workers, "wall_s": wall, "evals_per_s": n / wall, "statuses": statuses,
            "unexpected_results": wrong[:20], "n_unexpected": len(wrong),
            "stray_processes_after": len(left_procs), "containers_left_after": left_containers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="local,docker")
    ap.add_argument("--n", type=int, default=20, help="evaluations per latency measurement")
    ap.add_argument("--throughput-n", type=int, default=16)
    ap.add_argument("--soak", type=int, default=0, help="soak N evaluations (20%% hostile) per backend")
    ap.add_argument("--soak-workers", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "sandbox.json"))
    args = ap.parse_args()
    task = demo_task(timeout_s=30)
    backends = [b for b in args.backends.split(",") if b]
    res: dict = {"machine": machine(), "task": task.instance_id, "limits": LIMITS.__dict__, "backends": {}}
    for b in backends:
        print(f"== {b}", flush=True)
        evaluate(task, task.patch, backend=b, limits=LIMITS)  # warm-up (runtime / image / pool)
        lat = eval_latency(task, b, args.n)
        floors = {"bare_bwrap": floor_local(task, args.n)} if b == "local" else floor_docker(task, args.n)
        thr = {w: throughput(task, b, w, args.throughput_n) for w in (1, 2, 4)}
        entry = {"evaluate": stats(lat), "floors": {k: stats(v) for k, v in floors.items()},
                 "throughput_evals_per_s": thr}
        floor_key = "bare_bwrap" if b == "local" else "docker_exec_cli"
        entry["overhead_ratio_vs_floor"] = entry["evaluate"]["median_s"] / entry["floors"][floor_key]["median_s"]
        if b == "docker":
            entry["target_overhead_le_1.5x"] = entry["overhead_ratio_vs_floor"] <= 1.5
        else:
            entry["target_ge_10_evals_per_s_2_workers"] = thr[2] >= 10.0
        if args.soak:
            print(f"   soak {args.soak} ...", flush=True)
            entry["soak"] = soak(task, b, args.soak, args.soak_workers)
            s = entry["soak"]
            entry["target_soak_clean"] = (s["stray_processes_after"] == 0 and not s["containers_left_after"]
                                          and s["recorded"] == s["n"])
        res["backends"][b] = entry
    if "docker" in backends:
        from minicoder.sandbox.docker import shutdown_pools

        shutdown_pools()
    res["machine"]["loadavg_end"] = os.getloadavg()

    print(f"\n{'backend':<8}{'evaluate':>10}{'floor':>10}{'ratio':>7}{'1 w/s':>8}{'2 w/s':>8}{'4 w/s':>8}  floor is")
    for b, e in res["backends"].items():
        fk = "bare_bwrap" if b == "local" else "docker_exec_cli"
        t = e["throughput_evals_per_s"]
        print(f"{b:<8}{e['evaluate']['median_s']:>9.3f}s{e['floors'][fk]['median_s']:>9.3f}s"
              f"{e['overhead_ratio_vs_floor']:>6.2f}x{t[1]:>8.2f}{t[2]:>8.2f}{t[4]:>8.2f}  {fk}")
        if "soak" in e:
            s = e["soak"]
            print(f"   soak: {s['recorded']}/{s['n']} recorded ({s['hostile']} hostile), {s['n_unexpected']} unexpected, "
                  f"stray processes {s['stray_processes_after']}, containers left {s['containers_left_after']}, "
                  f"{s['evals_per_s']:.2f} evals/s")
    print(f"load average start {res['machine']['load_average_at_start']}, end {res['machine']['loadavg_end']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
