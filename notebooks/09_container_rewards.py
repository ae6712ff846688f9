# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Container rewards: run the candidate's code, trust only the hidden tests
#
# Agentic RL for coding (Qwen3-Coder-Next, DeepSWE, SWE-RL) needs a reward it can compute millions of
# times without a human: apply the model's patch to the repository, run the task's **hidden** tests,
# and give **1** only when every `FAIL_TO_PASS` and `PASS_TO_PASS` test passes (SWE-bench's rule).
# Two things make that hard:
#
# 1. the candidate's code is untrusted: it may loop forever, fork-bomb, fill the disk, reach the
#    network, or read the host;
# 2. the policy is *optimised against* the reward, so it will find any way to make the tests *look*
#    green: a `conftest.py` that flips outcomes, editing the tests, printing fake `PASSED` lines,
#    `os._exit(0)` before the tests run, ...
#
# This notebook runs a small real task through `minicoder.sandbox`:
#
# 1. the task and the sandbox (Docker if an engine answers, otherwise bubblewrap; we say which);
# 2. a good patch, a wrong patch, and their rewards;
# 3. a handful of hacking attempts and what the reward code makes of them;
# 4. the reward rule re-derived in three lines and checked against the library;
# 5. latency per backend, plotted;
# 6. a session driven by hand (look, edit, run the tests, diff), then its diff graded in a fresh sandbox;
# 7. the warm runner that makes rewards fast enough for RL, and the latency table as a plot.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import platform, time
import plotly.graph_objects as go
import minicoder
from minicoder.sandbox import evaluate, run_tests, Limits, Status
from minicoder.sandbox.examples import demo_task, hostile_patches, BASE_FILES, OPS
from minicoder.gitdiff import make_diff
print(f"python {platform.python_version()}, minicoder {minicoder.__version__}")

# %% [markdown]
# ## 1 · The task
#
# `demo_task()` is a tiny package `calc` whose `mean` truncates (`//` instead of `/`). The agent sees
# the problem statement; the hidden `test_patch` adds `tests/test_mean.py`. Test ids are pytest node
# ids relative to the repository root, parametrized ids included.

# %%
task = demo_task()
print(task.problem_statement, "\n")
print("FAIL_TO_PASS:", task.FAIL_TO_PASS)
print("PASS_TO_PASS:", task.PASS_TO_PASS, "\n")
print(task.patch)

# %% [markdown]
# ## 2 · Which sandbox?
#
# The **docker** backend runs each evaluation in a fresh container from a warm pool: no network,
# memory/pids/CPU limits, user 1000, all capabilities dropped, read-only root filesystem. The
# **local** backend uses bubblewrap namespaces with rlimits: no network namespace, read-only `/usr`,
# a private `/tmp`, its own pid namespace, and a fresh unprivileged host uid per sandbox.
# We use Docker if an engine answers and say so; the reward code is the same for both.

# %%
from minicoder.sandbox.base import SandboxError
BACKENDS = ["local"]
try:
    from minicoder.sandbox.docker import client
    from minicoder.record import DEFAULT_IMAGE
    client().images.get(DEFAULT_IMAGE)  # an engine that answers *and* has the base task image
    BACKENDS.append("docker")
except SandboxError as e:
    print("no Docker engine:", str(e)[:120])
except Exception as e:
    print(f"the engine answers but has no {DEFAULT_IMAGE} image (run `make docker`):", type(e).__name__)
BACKEND = "docker" if "docker" in BACKENDS else "local"
print("backends available:", BACKENDS, "-> this notebook evaluates with:", BACKEND)

# %% [markdown]
# What does code inside the sandbox see? Its own uid, a workspace at `/workspace`, a minimal
# environment, and only a loopback network interface.

# %%
from minicoder.sandbox.reward import open_sandbox
with open_sandbox(BACKEND, task, Limits(timeout_s=20)) as sb:
    sb.prepare(task)
    r = sb.run(["python3", "-c", "import os, json; print(json.dumps({'uid': os.getuid(), 'cwd': os.getcwd(), "
                "'files': sorted(os.listdir('.')), 'env': sorted(os.environ), "
                "'net': [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]}, indent=1))"])
print(r.stdout, r.summary())

# %% [markdown]
# ## 3 · A good patch and a wrong patch
#
# `evaluate` builds a fresh workspace, applies the patch, puts the hidden tests in fresh, runs them
# and parses pytest's JUnit XML report (written to a random file name outside the workspace, never
# read from stdout). `fraction` is the share of tests passed, useful for shaping; `reward` is
# all-or-nothing.

# %%
wrong = make_diff(BASE_FILES, {"calc/ops.py": OPS.replace("return sum(xs) // len(xs)", "return round(sum(xs) / len(xs))")})
rows = []
results = {}
for name, patch in [("gold", task.patch), ("wrong (rounds)", wrong)]:
    r = results[name] = evaluate(task, patch, backend=BACKEND)
    rows.append((name, r.reward, round(r.fraction, 3), r.status, f"{r.duration_s:.2f}s"))
wrong_result = results["wrong (rounds)"]
for row in rows:
    print("{:<16} reward={:<4} fraction={:<6} status={:<11} {}".format(*row))
print()
for t, o in wrong_result.tests.items():
    print(f"  {o:<7} {t}")

# %% [markdown]
# ## 4 · Hacking attempts
#
# Each attack below is a patch a policy could learn. The defences, in `minicoder/sandbox/patching.py`
# and `reward.py`: files the verdict depends on (tests, `conftest.py`, pytest config, `sitecustomize`,
# `.pth`, bytecode, modules shadowing pytest) are restored after the candidate patch; pytest runs in
# isolated mode with plugin auto-loading off; the report is cross-checked against pytest's exit status.
# `network` and `read_host` contain the *correct* fix and sabotage it only if the sandbox leaks, so
# their honest reward of 1.0 shows the isolation held.

# %%
import os
os.environ["MINICODER_CANARY"] = "host secret"
attacks = hostile_patches(canary_file=os.path.abspath("09_container_rewards.ipynb"), canary_env="MINICODER_CANARY")
show = ["conftest", "edit_tests", "fake_passed", "os_exit_import", "shadow_pytest", "network", "read_host", "not_utf8"]
for name in show:
    a = attacks[name]
    r = evaluate(task, a.patch, backend=BACKEND)
    assert r.reward == a.expect_reward and r.status in a.expect_status, (name, r.status, r.message)
    print(f"{name:<15} reward={r.reward:<4} status={r.status:<16} {(r.message or ', '.join(r.dropped))[:70]}")


# %% [markdown]
# ## 5 · The reward rule, re-derived
#
# SWE-bench's rule: resolved only if every `FAIL_TO_PASS` and `PASS_TO_PASS` test passed (an expected
# failure counts as passing); a test missing from the report counts as failed; an untrusted report
# (timeout, exit status disagreeing with the report, no report) scores 0.

# %%
def my_reward(task, outcomes, trusted):
    ids = task.FAIL_TO_PASS + task.PASS_TO_PASS
    return float(trusted and all(outcomes.get(i) in ("passed", "xfailed") for i in ids))

for name, patch in (("gold", task.patch), ("wrong (rounds)", wrong)):
    tr = run_tests(task, patch, task.FAIL_TO_PASS + task.PASS_TO_PASS, backend=BACKEND)
    mine = my_reward(task, tr.outcomes, tr.status == Status.OK)
    assert mine == results[name].reward
    print(f"{name:<15} rule re-derived: {mine} == library: {results[name].reward}")

# %% [markdown]
# ### Exercise `09.reward`
#
# Cross-check the sandbox's grading: read a pytest JUnit XML report yourself (each `<testcase>` has
# a `nodeid` property; `<failure>`, `<error>`, `<skipped>` children; an expected failure is a
# `<skipped type="pytest.xfail">`) and return 1.0 only if every FAIL_TO_PASS and PASS_TO_PASS test
# passed (an xfail counts as passing; a missing test as failed).

# %%
import xml.etree.ElementTree as ET

from minicoder.course import check


def reward(junit_xml, fail_to_pass, pass_to_pass):
    # BEGIN SOLUTION
    outcome = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        nodeid = next(p.get("value") for p in case.iter("property") if p.get("name") == "nodeid")
        skipped = case.find("skipped")
        if case.find("failure") is not None:
            outcome[nodeid] = "failed"
        elif case.find("error") is not None:
            outcome[nodeid] = "error"
        elif skipped is not None:
            outcome[nodeid] = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome[nodeid] = "passed"
    return 1.0 if all(outcome.get(t) in ("passed", "xfailed") for t in fail_to_pass + pass_to_pass) else 0.0
    # END SOLUTION


check("09.reward", reward);


# %% [markdown]
# ## 6 · Latency per backend
#
# A few evaluations of the gold patch per available backend (more in `bench/sandbox.py`, which also
# measures the bare floors: a plain `bwrap` run and a plain `docker exec` of the same pytest, and a
# 500-evaluation soak with 20% hostile patches). Most of an evaluation is Python and pytest starting
# up; the sandbox itself adds little.

# %%
N = 2 if os.environ.get("MINICODER_CI") else 8
lat = {}
for b in BACKENDS:
    evaluate(task, task.patch, backend=b)  # warm-up: runtime / container pool
    xs = []
    for _ in range(N):
        t0 = time.perf_counter()
        assert evaluate(task, task.patch, backend=b).resolved
        xs.append(time.perf_counter() - t0)
    lat[b] = xs
    print(f"{b:<7} median {sorted(xs)[len(xs) // 2]:.2f}s over {N}")
fig = go.Figure([go.Box(y=v, name=k, boxpoints="all") for k, v in lat.items()])
fig.update_layout(title="seconds per evaluation (gold patch, 7 tests)", yaxis_title="seconds", height=380)
fig.show()

# %% [markdown]
# ## 7 · A session: the agent's live sandbox, then a fresh one for grading
#
# Agentic RL needs more than a grader. The policy reads files, edits them and runs commands turn by turn
# in a live environment, and a *fresh* environment grades what it hands in (SWE-bench and SkyRL grade
# this way). `open_session` gives one such environment per rollout:
#
# - it holds only the task's **visible** files: the hidden `test_patch` never enters a session;
# - `read_file` / `write_file` / `list_files` work on the host, and never follow a symlink the agent made;
# - `exec` runs a command inside, under the usual limits; what the command started is gone when it returns;
# - `diff()` is the agent's change against the base commit, computed on the host from its own copy of
#   the base. That diff is what `evaluate` grades in a new sandbox.
#
# Below we play the agent by hand: look, fix the bug, run the visible tests, take the diff, grade it.

# %%
from minicoder.sandbox.session import open_session

with open_session(task, backend=BACKEND) as s:
    print(s)
    print("files the agent sees:", s.list_files())  # no tests/test_mean.py: the hidden tests stay hidden
    src = s.read_file("calc/ops.py")
    s.write_file("calc/ops.py", src.replace("sum(xs) // len(xs)", "sum(xs) / len(xs)"))
    r = s.exec("python -m pytest -q -p no:cacheprovider tests/")
    print("visible tests:", r.summary(), "|", r.stdout.strip().splitlines()[-1])
    print("who am I in there:", s.exec("id -un; echo $HOME; hostname").stdout.split())
    patch = s.diff()
print(patch)
graded = evaluate(task, patch, backend=BACKEND)
print(f"graded in a fresh sandbox with the hidden tests: {graded.status} -> reward {graded.reward}")
assert graded.resolved

# %% [markdown]
# ## 8 · Why it is fast enough for RL: the warm runner
#
# Starting Python and importing pytest takes about 0.3 s. That is more than running this task's tests,
# so an evaluation that starts a fresh interpreter each time is capped near 5 per second on two cores.
# The **warm runner** pays that start once. A zygote process (the pattern Android and Chromium use)
# imports pytest, then forks one child per evaluation. Each child enters namespaces of its own: pid,
# mount, network, ipc. It gets a fresh uid, an in-memory workspace sized by the disk limit, no
# capabilities, and a seccomp filter, so it cannot see, signal or write anything of the zygote or of
# another candidate. `evaluate_many` grades a whole GRPO group that way. `runner="cold"` is the old
# path, kept for comparison and for hosts without root.
#
# We measure a few of each here: the cold path, the warm path, `evaluate_many` per candidate, and a
# session's `exec` of `python3 -c pass`. `bench/sandbox.py` measures all of them against the bare
# floors, on both backends and two tasks, with the machine's load.

# %%
from minicoder.sandbox import evaluate_many

N = 2 if os.environ.get("MINICODER_CI") else 6
rows = []
for b in BACKENDS:
    for name, fn in (
        ("evaluate, cold", lambda b=b: evaluate(task, task.patch, backend=b, runner="cold")),
        ("evaluate, warm", lambda b=b: evaluate(task, task.patch, backend=b)),
        ("evaluate_many (per candidate)", lambda b=b: evaluate_many(task, [task.patch] * 4, backend=b, workers=2)),
    ):
        fn()  # warm-up
        xs = []
        for _ in range(N):
            t0 = time.perf_counter()
            out = fn()
            xs.append((time.perf_counter() - t0) / (4 if isinstance(out, list) else 1))
        rows.append((b, name, sorted(xs)[len(xs) // 2]))
    with open_session(task, backend=b) as s:
        s.exec("true")
        xs = []
        for _ in range(3 * N):
            t0 = time.perf_counter()
            s.exec(["python3", "-c", "pass"])
            xs.append(time.perf_counter() - t0)
        rows.append((b, "session exec (python -c pass)", sorted(xs)[len(xs) // 2]))
for b, name, t in rows:
    print(f"{b:<7} {name:<32} {t * 1000:7.0f} ms")
print("load average:", [round(x, 1) for x in os.getloadavg()], "(a shared machine slows every row alike)")
fig = go.Figure([go.Bar(name=b, x=[n for bb, n, _ in rows if bb == b], y=[t * 1000 for bb, _, t in rows if bb == b])
                 for b in BACKENDS])
fig.update_layout(title="milliseconds per evaluation / command (median)", yaxis_title="ms", yaxis_type="log",
                  barmode="group", height=420)
fig.show()

# %% [markdown]
# The committed benchmark (`bench/results/sandbox.json`, from `bench/sandbox.py`) has the same rows for
# both tasks, next to the floors: a bare `bwrap ... python -c pass`, a bare `bwrap ... python -m pytest`,
# and the same two through `docker exec`. It also records the load of the machine it ran on.

# %%
import json
from pathlib import Path

bench = Path(minicoder.__file__).resolve().parents[1] / "bench" / "results" / "sandbox.json"
if bench.exists() and "runs" in json.loads(bench.read_text()):
    res = json.loads(bench.read_text())
    fig = go.Figure()
    for key, e in res["runs"].items():
        names = ["bare process start", "bare pytest"] + list(e["latency"])
        vals = [e["floors"]["process_start"]["median_s"], e["floors"]["pytest"]["median_s"]] + [
            v["median_s"] for v in e["latency"].values()]
        fig.add_bar(name=key, x=names, y=[v * 1000 for v in vals])
    fig.update_layout(title=f"bench/sandbox.py: median ms (load average {res['machine']['load_average_at_start'][0]:.1f}"
                      f" on {res['machine']['cpu_count']} cores)", yaxis_type="log", yaxis_title="ms",
                      barmode="group", height=460)
    fig.show()
else:
    print("no benchmark results yet: run `python bench/sandbox.py`")

# %%
if "docker" in BACKENDS:
    from minicoder.sandbox.docker import shutdown_pools
    from minicoder.sandbox.warm import shutdown_zygotes
    shutdown_zygotes()  # the warm runner's container
    shutdown_pools()  # and the containers of the cold path

# %% [markdown]
# ## What this does not protect against
#
# Stated plainly (also in the module docstrings): code running *inside* the test process can still
# monkeypatch pytest's objects in memory; we make that harder (import order, random report path,
# `os._exit` right after pytest, exit-status cross-check) but not impossible. Both backends share the
# host kernel. The local backend has no CPU quota and bounds memory per process (RLIMIT_AS), not per
# tree. Rewards are only as good as the hidden tests: a weak test suite rewards weak fixes.
