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
# # 08 · Task synthesis: verifiable tasks from git history and by bug injection
#
# An agentic coding model is trained with reinforcement learning on **tasks whose answer a machine can
# check**: a repository, a problem statement, and hidden tests that fail before the fix and pass after.
# Qwen3-Coder-Next was trained on about 800k such tasks mined from real pull requests plus about 850k
# synthesised by *injecting bugs* into code that already has tests (a bug is kept only if it breaks
# tests and reverting it fixes them), with every environment validated by execution and a QA stage
# that drops ambiguous or exploitable tasks.
#
# This notebook builds that pipeline at toy scale with `minicoder.tasks`:
#
# 1. **mine git history**: a small repository with real commits -> the commits that fix a bug with a test;
#    then **pull requests of a real project** (more-itertools), each with an environment built from
#    its own package metadata;
# 2. **mutate**: AST bug injection into HumanEval's canonical solutions -> validated bug-fix tasks;
# 3. one task **end to end**: statement, gold patch, the failing and passing runs in the sandbox;
# 4. the **yield funnel** (candidates -> validated -> after QA);
# 5. a **rejected exploitable verifier**: tests that a `return False` passes.
#
# All candidate code runs in the sandbox (`minicoder.sandbox`, bubblewrap backend), never in this kernel.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os, subprocess, sys, tempfile, json
from pathlib import Path
import plotly
import plotly.graph_objects as go
from minicoder.tasks import envbuild, mine_git, mine_pr, mutate, validate, qa, pipeline
from minicoder.gitdiff import file_diff
from minicoder.record import read_tasks
from minicoder.data.corpus import humaneval_problems
from minicoder.sandbox.reward import evaluate
print("python", sys.version.split()[0], "| plotly", plotly.__version__)
CI = os.environ.get("MINICODER_CI") == "1"   # in CI: the smallest sizes that still show everything
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()

# %% [markdown]
# ## 1 · Mining a repository's history
#
# A commit is a task candidate when it changes **source and tests together** (a refactor with no test
# change, or a change to tests only, is not a bug fix we can verify). We build a tiny project with
# four real commits: the initial code, a real fix with its regression test, a refactor, a test-only
# commit. `classify_commit` is the static filter; it needs no execution.

# %%
repo = Path(tempfile.mkdtemp(prefix="nb08-")) / "shop"
repo.mkdir()
env = {**os.environ, "GIT_AUTHOR_NAME": "nb", "GIT_AUTHOR_EMAIL": "nb@x",
       "GIT_COMMITTER_NAME": "nb", "GIT_COMMITTER_EMAIL": "nb@x"}
git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, env=env, capture_output=True, text=True).stdout

def commit(files, message):
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git("add", "-A"); git("commit", "-q", "-m", message)

price = "def total(prices, discount=0.0):\n    s = sum(prices)\n    return s - discount\n"
git("init", "-q", "-b", "main")
commit({"shop.py": price, "tests/test_shop.py": "from shop import total\n\n\ndef test_total():\n    assert total([1, 2]) == 3\n"},
       "Initial shop")
commit({"shop.py": price.replace("return s - discount", "return s * (1 - discount)"),
        "tests/test_shop.py": "from shop import total\n\n\ndef test_total():\n    assert total([1, 2]) == 3\n\n\n"
                              "def test_discount_is_a_fraction():\n    assert total([10, 10], 0.25) == 15\n"},
       "Discount is a fraction of the total, not an amount\n\ntotal([10, 10], 0.25) gave 19.75.")
commit({"shop.py": price.replace("return s - discount", "return s * (1 - discount)").replace("s = sum", "s = sum  # subtotal\n    s = sum")},
       "Name the subtotal")
commit({"tests/test_shop.py": (repo / "tests/test_shop.py").read_text() + "\n\ndef test_empty():\n    assert total([]) == 0\n"},
       "Test the empty basket")

for c in mine_git.iter_commits(repo):
    cand, reason = mine_pr.classify_commit(repo, c)
    print(f"{c.sha[:8]}  {c.subject[:50]:<52} -> {'CANDIDATE' if cand else reason}")

# %% [markdown]
# For the candidate, the commit's diff is split: test files become the hidden `test_patch`, the rest
# the gold `patch`. Then the tests run in the sandbox twice, *both times with the new tests*: on the
# parent commit (before) and with the fix (after). FAIL_TO_PASS = tests that pass only after;
# PASS_TO_PASS = tests that pass both times. The statement is the commit message plus the failing
# tests and pytest's assertion lines — never the diff.

# %%
mined = [o for o in mine_pr.mine(repo)]
for o in mined:
    print(o.candidate_id, "kept" if o.kept else f"rejected ({o.stage}): {o.reason}")
task_git = next(o.task for o in mined if o.kept)
print("\nFAIL_TO_PASS:", task_git.FAIL_TO_PASS, "\nPASS_TO_PASS:", task_git.PASS_TO_PASS)
print("\n--- problem statement ---\n" + task_git.problem_statement)
assert task_git.FAIL_TO_PASS == ["tests/test_shop.py::test_discount_is_a_fraction"]
assert task_git.PASS_TO_PASS == ["tests/test_shop.py::test_total"]

# %% [markdown]
# ### 1b · Pull requests of a real project
#
# On a real project, most changes arrive as **pull requests**, and the main branch's first-parent
# chain shows each one in one of three shapes: a *merge commit* (its diff against its first parent is
# the PR's whole change; the commits on its second parent are the PR's branch and carry its
# messages), a *squash merge* (one commit whose subject ends in `(#N)`), or a *direct commit*. A miner
# that skips merge commits finds almost nothing on a project like more-itertools, where nearly every
# change is a merge. `mine_pr.classify_commit` classifies every first-parent entry by kind and by the
# files it changes (source, tests, docs, CI, packaging, type stubs) and says why it is not a task.
#
# The notebook must run offline, so it cannot fetch a repository: it unpacks a **slice** shipped in
# `data/repos/` - the last 12 first-parent commits of more-itertools (MIT licence), a shallow git
# clone with its real commits and messages (see `data/repos/README.md`).

# %%
import tarfile
real_dir = Path(tempfile.mkdtemp(prefix="nb08-real-"))
with tarfile.open(ROOT / "data" / "repos" / "more-itertools-slice.tar.gz") as tf:
    tf.extractall(real_dir, filter="data")
real = real_dir / "more-itertools"
N_REAL = 8 if CI else 11  # the slice's 12th commit is its shallow root (no parent to diff against)
chain = list(mine_git.iter_commits(real, max_commits=N_REAL))
real_cands = []
for c in chain:
    kind, pr = mine_pr.commit_kind(c)
    cand, reason = mine_pr.classify_commit(real, c)
    real_cands += [cand] if cand else []
    title = mine_git.title_and_body(c)[0] or c.subject
    print(f"{c.sha[:8]} {kind:<9} #{pr or '-':<5} {title[:48]:<50} -> {'CANDIDATE' if cand else reason}")

# %% [markdown]
# Each candidate needs an **environment**: the packages its tests import and the command that runs
# them. `envbuild.infer` reads the repository's own metadata *at the base commit* (pyproject.toml,
# setup.cfg, setup.py, requirements files, tox.ini, noxfile.py, CI workflows - parsed, never run),
# and records what it took from where. `EnvBuilder` then resolves exact pins on the host, installs
# them into an environment shared by every task with the same dependency set (a cached read-only
# venv for the local sandbox, an image tagged by content hash for Docker), and checks it by running
# the tests at the base commit.

# %%
spec = envbuild.infer(real, real_cands[0].base)
print("requirements:", spec.requirements, "| left out:", spec.skipped)
print("test command:", spec.command([])[0])
for path, what in spec.evidence.items():
    print(f"  {path}: {what}")

# %% [markdown]
# Now the whole pipeline (`minicoder synth git`): classify, build environments, run each candidate's
# test files before and after the PR's change. Each PR's problem statement is its title and its
# branch's commit messages plus the failing tests' assertion output (never the diff).

# %%
from minicoder.tasks.pipeline_git import synth_git
real_out = real_dir / "tasks.jsonl"
s_real = synth_git(real, real_out, max_commits=N_REAL, validate=False, workers=2, progress=False)
print(s_real.table())
real_tasks = read_tasks(real_out)
t = real_tasks[0]
print(f"\n{t.instance_id} ({t.metadata['kind']}, PR #{t.metadata.get('pr')}): FAIL_TO_PASS {t.FAIL_TO_PASS}, "
      f"{len(t.PASS_TO_PASS)} PASS_TO_PASS")
print("environment:", t.environment.test_cmd, "|", len(t.environment.python_packages), "pinned packages")
print("\n--- problem statement ---\n" + t.problem_statement)
assert real_tasks and all(x.metadata["kind"] == "merge_pr" for x in real_tasks)

# %% [markdown]
# The same pipeline over the last 300 first-parent commits of three real projects, with validation,
# is `bench/synthesis.py --steps real` (its results are committed in `bench/results/synthesis.json`);
# the validated tasks are shipped in `data/tasks/real/`. Where the entries went, per project:

# %%
bench_json = ROOT / "bench" / "results" / "synthesis.json"
real_bench = json.loads(bench_json.read_text()).get("real") if bench_json.exists() else None
if real_bench:
    fig = go.Figure()
    projects = list(real_bench["projects"])
    stages = [("filter", "not a candidate"), ("environment", "no environment"), ("execute", "no FAIL_TO_PASS"),
              ("validate", "failed validation"), ("qa", "dropped by QA")]
    for stage, label in stages:
        fig.add_bar(name=label, x=projects, y=[sum(real_bench["projects"][p].get("local", {}).get("rejections", {})
                                                   .get(stage, {}).values()) for p in projects])
    fig.add_bar(name="validated task", x=projects,
                y=[real_bench["projects"][p].get("local", {}).get("funnel", {}).get("after qa", 0) for p in projects])
    fig.update_layout(barmode="stack", title="300 first-parent commits per project: where they went (local backend)",
                      yaxis_title="commits", height=380)
    fig.show()
else:
    print("bench/results/synthesis.json has no real-repository section yet")

# %% [markdown]
# ## 2 · Bug injection by AST mutation
#
# Real fixes are scarce; code with tests is not. We inject a bug into correct code, keep it only if
# some test that passed now fails, and make the *fix* (buggy -> original) the gold patch. Mutations
# are found on the AST but written back as **minimal text edits** (the mutated node is unparsed over
# its own source span), so the diff is one line and comments survive. Here are all mutations of a
# small function, by operator:

# %%
src = '''def count_above(xs, limit):
    n = 0
    for i in range(len(xs)):
        if xs[i] > limit:
            n += 1
    return n
'''
ms = mutate.find_mutations(src, "m.py")
from collections import Counter
print(Counter(m.operator for m in ms))
for m in ms[:12]:
    line = m.apply(src).splitlines()[m.line - 1].strip() if m.operator != "drop_statement" else "(line removed)"
    print(f"{m.operator:<17} {m.description:<32} {line}")

# %% [markdown]
# Re-deriving one operator by hand: flip `>` to `>=` with `ast`, splice the unparsed node over its
# span, and check that the library produced exactly this mutant.

# %%
import ast
tree = ast.parse(src)
cmp = next(n for n in ast.walk(tree) if isinstance(n, ast.Compare) and isinstance(n.ops[0], ast.Gt))
lines = src.splitlines(keepends=True)
start = sum(map(len, lines[:cmp.lineno - 1])) + cmp.col_offset
end = sum(map(len, lines[:cmp.end_lineno - 1])) + cmp.end_col_offset
cmp.ops[0] = ast.GtE()
by_hand = src[:start] + ast.unparse(cmp) + src[end:]
assert by_hand in {m.apply(src) for m in ms if m.operator == "flip_compare"}
print(file_diff("m.py", src, by_hand))

# %% [markdown]
# ### Exercise `08.invert_condition`
#
# A mutation operator: for every condition of an `if`, `elif`, `while`, ternary or comprehension
# `if`, make one mutant with that condition negated (`not (c)`, or `c` when it already starts with
# `not`). Return the mutants' sources. The checker compares with `find_mutations(...,
# operators=("invert_condition",))`.

# %%
import ast

from minicoder.course import check


def invert_condition(source):
    # BEGIN SOLUTION
    tree = ast.parse(source)
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            sites.append((node, "test", None))
        if isinstance(node, ast.comprehension):
            sites += [(node, "ifs", i) for i in range(len(node.ifs))]
    mutants = []
    for node, field, i in sites:
        old = getattr(node, field) if i is None else node.ifs[i]
        new = old.operand if isinstance(old, ast.UnaryOp) and isinstance(old.op, ast.Not) else ast.UnaryOp(ast.Not(), old)
        if i is None:
            setattr(node, field, new)
        else:
            node.ifs[i] = new
        mutants.append(ast.unparse(tree))
        if i is None:
            setattr(node, field, old)
        else:
            node.ifs[i] = old
    return mutants
    # END SOLUTION


check("08.invert_condition", invert_condition);


# %% [markdown]
# ### HumanEval as a source of subjects
#
# Each HumanEval problem becomes a tiny repository: `solution.py` = prompt + canonical solution. Its
# `check(candidate)` is split into one pytest test per assertion (plus `test_check` for the whole), so
# a bug that breaks some cases gives both FAIL_TO_PASS and PASS_TO_PASS tests. The tests are hidden in
# the task's `test_patch`. Only the solution's lines are mutated, never the prompt.

# %%
problems = humaneval_problems()
subject = mutate.humaneval_subject(problems[0])
print(subject.files["solution.py"])
print(subject.tests["test_solution.py"][:900], "...")

# %% [markdown]
# Now the pipeline for real: for each sampled mutant, run the hidden tests on the buggy state and with
# the gold revert, then **validate** (repeat runs, trivial-patch exploits, does the test exercise the
# change) and **QA**. Every finished candidate is one line in a ledger next to the output, so the run
# is resumable. (Sizes are small here; `bench/synthesis.py` runs all 164 problems.)

# %%
out_dir = Path(tempfile.mkdtemp(prefix="nb08-tasks-"))
subjects = [mutate.humaneval_subject(p) for p in (problems[4:5] if CI else problems[3:6])]
summary = pipeline.synth_mutate(subjects, out_dir / "tasks.jsonl", per_subject=2, combine=1, seed=0,
                                validate=True, backend="local", workers=2, progress=False)
print(summary.table())
tasks = read_tasks(out_dir / "tasks.jsonl")
print(len(tasks), "validated tasks")

# %% [markdown]
# ## 3 · One task, end to end
#
# What the agent sees (the statement and the buggy repository), what the grader holds (the gold patch
# and hidden tests), and the two runs that make it a valid task: the buggy state fails, the gold patch
# passes — scored by the sandbox's `evaluate` (reward 1.0 only when every FAIL_TO_PASS and
# PASS_TO_PASS test passes).

# %%
t = tasks[0]
print("instance:", t.instance_id, "| operators:", t.metadata["operators"])
print("\n--- statement ---\n" + t.problem_statement)
print("\n--- gold patch ---\n" + t.patch)
before = evaluate(t, "")
after = evaluate(t, t.patch)
print("no patch :", before.status, "reward", before.reward,
      "| failing:", sorted(k for k, v in before.tests.items() if v != "passed"))
print("gold     :", after.status, "reward", after.reward, "| fraction", after.fraction)
assert before.reward == 0.0 and after.reward == 1.0


# %% [markdown]
# ## 4 · The yield funnel
#
# Each stage drops candidates for a counted reason: mutants that no test notices (equivalent or
# untested code), validation failures, QA rejections. The small run above, and — when it has been run —
# the full benchmark over all of HumanEval and a real PyPI package (`bench/results/synthesis.json`).

# %%
def funnel_fig(funnel, title):
    fig = go.Figure(go.Funnel(y=list(funnel), x=list(funnel.values()), textinfo="value+percent initial"))
    fig.update_layout(title=title, height=320, margin=dict(l=140, r=20, t=50, b=20))
    return fig

funnel_fig(summary.funnel, "this notebook's run").show()
bench = ROOT / "bench" / "results" / "synthesis.json"
if bench.exists():
    res = json.loads(bench.read_text())
    for name in ("humaneval", "package"):
        if name in res:
            funnel_fig(res[name]["funnel"], f"bench: {name}").show()
    if "humaneval" in res and res["humaneval"].get("per_operator"):
        per = res["humaneval"]["per_operator"]
        ops = sorted(per)
        fig = go.Figure([go.Bar(name=k, x=ops, y=[per[o].get(k, 0) for o in ops])
                         for k in ("candidates", "broke_tests", "validated", "after_qa")])
        fig.update_layout(title="bench: yield per mutation operator (HumanEval)", barmode="group", height=340)
        fig.show()
    print({k: res[k].get("rejections") for k in ("humaneval", "package") if k in res})

# %% [markdown]
# ## 5 · A rejected exploitable verifier
#
# A task is only as good as its tests. Below, a real bug (`is_even` tests for odd) with tests that
# only ever expect `False`: the gold patch passes and the buggy code fails, so fail-before/pass-after
# alone would accept it — but a solver could "fix" it with `return False`. Validation stubs the
# changed function with `pass`, constants and `raise NotImplementedError` (on top of the gold patch)
# and rejects the task when any stub earns the full reward.

# %%
from minicoder.record import Environment, Task
buggy = 'def is_even(n: int) -> bool:\n    return n % 2 == 1\n'
weak = Task(instance_id="planted_weak_verifier", repo="demo/parity", base_commit="",
            patch=file_diff("parity.py", buggy, buggy.replace("== 1", "== 0")),
            test_patch=file_diff("test_parity.py", None,
                                 "from parity import is_even\n\n\ndef test_three():\n    assert is_even(3) == False\n"
                                 "\n\ndef test_seven():\n    assert not is_even(7)\n"),
            problem_statement="is_even returns True for odd numbers.",
            FAIL_TO_PASS=["test_parity.py::test_three", "test_parity.py::test_seven"], PASS_TO_PASS=[],
            environment=Environment(files={"parity.py": buggy}), source="manual")
v = validate.validate_task(weak)
print("ok:", v.ok, "\nreason:", v.reason, "\nchecks:", v.checks, "\nsandbox runs:", v.runs)
assert not v.ok and v.reason.startswith("exploitable verifier")

# %% [markdown]
# The same tasks also pass through the QA filters, which need no execution: duplicates by normalised
# patch, statements that leak the fix, tests that never name the changed code, oversized patches.

# %%
leaky = Task(**{**t.__dict__, "instance_id": "leaky",
                "problem_statement": t.problem_statement + "\nHint: " + max(
                    (l[1:] for l in t.patch.splitlines() if l.startswith("+") and not l.startswith("+++")), key=len)})
rep = qa.run_qa(tasks + [leaky, Task(**{**t.__dict__, "instance_id": "dup"})])
print("kept", len(rep.kept), "| rejected:", [(i, r) for i, r, _ in rep.rejected])

# %% [markdown]
# ## 6 · The shipped seed set
#
# `data/tasks/seed_tasks.jsonl` holds a few hundred validated HumanEval-derived tasks, made by the same
# pipeline (the command is in `data/tasks/README.md`); the RL stage trains on them. A quick look:

# %%
seed_path = ROOT / "data" / "tasks" / "seed_tasks.jsonl"
if seed_path.exists():
    seed = read_tasks(seed_path)
    ops = Counter(op if len(t.metadata["operators"]) == 1 else "combined"
                  for t in seed for op in t.metadata["operators"][:1])
    print(len(seed), "tasks from", len({t.metadata["humaneval_id"] for t in seed}), "problems,",
          f"{seed_path.stat().st_size / 1e6:.1f} MB")
    fig = go.Figure(go.Bar(x=list(ops), y=list(ops.values())))
    fig.update_layout(title="seed set: tasks per mutation operator", height=300)
    fig.show()
else:
    print("no seed set at", seed_path)

# %% [markdown]
# ## 7 · Beyond Python: JavaScript, Go and Rust
#
# The same pipeline runs three more languages. One table (`minicoder.sandbox.languages`) says which
# files are tests, which configuration a patch may not touch (`package.json`, `go.mod`, `Cargo.toml`,
# `build.rs`, ...) and which image has the toolchain (Debian's `nodejs`, `golang-go`, `cargo`). The
# graders read structured reports written outside the workspace: node:test's TAP file (or tape's result
# rows, a mocha reporter's rows, jest's JSON report), `go tool test2json` events plus a sentinel test
# compiled into each Go test binary, and libtest's `--logfile` per Rust test target (the integration tests,
# and the unit tests inside src/*.rs, whose test modules a patch cannot change: `sandbox.rust_tests` puts
# the hidden ones back). Bug injection uses tree-sitter: the seven operators are written once
# over a small table of node types per grammar (`minicoder.tasks.mutate_ts`).
#
# Here we commit each language's tiny demo package twice (buggy, then the fix with its test), mine the
# history, and validate the one task it yields.

# %%
from minicoder.gitdiff import apply_to_snapshot
from minicoder.sandbox.lang_examples import demo_task
from minicoder.tasks.mine_pr import mine

GIT = {"GIT_AUTHOR_NAME": "nb", "GIT_AUTHOR_EMAIL": "nb@x", "GIT_COMMITTER_NAME": "nb",
       "GIT_COMMITTER_EMAIL": "nb@x", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def commit(repo, files, message):
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=GIT)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True, env=GIT)


lang_rows = []
for language in ("javascript", "go", "rust"):
    demo = demo_task(language)
    repo = Path(tempfile.mkdtemp(prefix=f"nb08-{language}-"))
    subprocess.run(["git", "init", "-qb", "main"], cwd=repo, check=True, env=GIT)
    commit(repo, demo.environment.files, "calc: numeric helpers")
    commit(repo, apply_to_snapshot(apply_to_snapshot(demo.environment.files, demo.patch), demo.test_patch),
           "mean truncated fractions\n\nmean([1, 2]) was 1.")
    mined = [o for o in mine(repo) if o.kept]
    task = mined[0].task
    v = validate.validate_task(task, repeats=1)
    lang_rows.append((language, task.instance_id, task.FAIL_TO_PASS, v.ok, v.reason))
    print(f"{language:<11} mined {len(mined)} task(s); FAIL_TO_PASS {task.FAIL_TO_PASS}; validated: {v.ok} {v.reason}")
assert all(ok for *_, ok, _ in lang_rows)

# %% [markdown]
# The shipped per-language sets (`data/tasks/{javascript,go,rust}_tasks.jsonl`, regenerated by
# `python -m minicoder.tasks.lang_sets all`) come from real code: npm packages that publish their tests,
# and Go and Rust sources that Debian ships (`golang-*-dev`, `librust-*-dev`), mutated and validated the
# same way.

# %% [markdown]
# **What we built.** `minicoder synth git --repo PATH`, `minicoder synth mutate --source humaneval|PATH`
# and `minicoder validate --tasks F --backend local|docker` run these pipelines resumably and write
# a report; `data/tasks/seed_tasks.jsonl` is a validated HumanEval-derived seed set for the RL stage.
