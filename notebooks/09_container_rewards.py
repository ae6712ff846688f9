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
# 5. latency per backend, plotted.

# %%
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

# %%
if "docker" in BACKENDS:
    from minicoder.sandbox.docker import shutdown_pools
    shutdown_pools()  # remove the warm containers this notebook started

# %% [markdown]
# ## What this does not protect against
#
# Stated plainly (also in the module docstrings): code running *inside* the test process can still
# monkeypatch pytest's objects in memory; we make that harder (import order, random report path,
# `os._exit` right after pytest, exit-status cross-check) but not impossible. Both backends share the
# host kernel. The local backend has no CPU quota and bounds memory per process (RLIMIT_AS), not per
# tree. Rewards are only as good as the hidden tests: a weak test suite rewards weak fixes.
