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
# # 10 · Agentic RL: the model acts, the tests grade, GRPO learns
#
# Everything so far prepared a model and the means to check its work: a task format with hidden
# tests (08), sandboxes that run untrusted code and grade it (09). Here the model finally *attempts*
# tasks. Qwen3-Coder-Next's recipe is "write it, run it, fix it when it fails": the model works in a
# live environment through tools, its final repository is graded by tests it never saw, and that
# reward updates the policy. Each attempt is three stages (the report's MegaFlow): **rollout** (the
# policy acts in a session), **evaluation** (the diff is graded in a fresh sandbox), and
# **post-processing** (group-relative advantages, the update).
#
# This notebook, on a CPU:
#
# 1. the toy task family the toy model can learn from (train and held-out splits);
# 2. one rollout shown turn by turn: a scripted agent that fails once, reads the test output, retries;
# 3. the warm-started model (the checkpoint the repository ships, or your own `runs/warm/final`;
#    without either, a tiny one trained here in about a minute) acting on its own, with the exact
#    token ids and loss mask it produced;
# 4. the GRPO loss re-derived in a few lines and checked against `minicoder.rl.grpo`;
# 5. a short GRPO run through the real pipeline with a live reward curve;
# 6. samples before and after;
# 7. reward hacking: what a naive grader pays for, and what ours pays.
#
# The measured held-out gain lives in `bench/rl_toy.py` (about 30 minutes of CPU, 3 seeds), not here.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import json, os, time
from pathlib import Path
import tempfile
import plotly.graph_objects as go
import torch
from IPython.display import display

from minicoder.agent.cli import session_opener
from minicoder.agent.loop import AgentLimits, Job, run_rollouts
from minicoder.agent.tools import ToolConfig
from minicoder.rl.toy_tasks import generate
from minicoder.rl import warmstart

torch.set_num_threads(1)  # a tiny model on a shared CPU: one thread is the fastest (see bench/rl_toy.py)
CI = os.environ.get("MINICODER_CI") == "1"
open_env = session_opener("local")  # a live sandbox session per rollout (bubblewrap / the warm runner)
TOOLS = ToolConfig.toy()
LIMITS = AgentLimits(max_turns=8, max_context_tokens=1400, max_new_tokens=96)

# %% [markdown]
# ## 1 · Tasks a toy model can learn from
#
# `minicoder.rl.toy_tasks` generates tasks in the synthesis stage's format: a module with one small
# function whose docstring says what it computes and then spells out the correct body step by step
# ("Steps: s = a + b; t = s * 3; return t"), one injected bug (operator swap, off-by-one constant,
# flipped comparison, swapped arguments, wrong returned variable), visible checks the agent may run
# (`python test_visible.py`) and hidden tests (in `test_patch`) for the reward. In train every bug
# is ambiguous without the docstring (`+` may have become `-` or `*`, a constant moved up or down),
# and the **held-out** split uses other function names and mutations train never makes (constants
# off by 2, `>` becoming `<=`, `+` becoming `//`): a model that memorised train fixes gains nothing
# there; the rule that works on both is "make the line agree with its docstring step".

# %%
train = generate("train", 64, seed=1)
held = generate("heldout", 8, seed=0)
task = train[1]
print(task.problem_statement, "\n")
print(task.environment.files[task.metadata["path"]])
print("hidden tests:", task.FAIL_TO_PASS + task.PASS_TO_PASS)
print("\nheld-out example:\n" + held[0].environment.files[held[0].metadata["path"]])

# %% [markdown]
# ## 2 · One rollout, turn by turn
#
# The agent loop (`minicoder.agent.loop.run_rollouts`) gives the policy the conversation, parses
# its Qwen3-Coder XML tool call, runs it in the rollout's session, and appends the observation,
# until `submit` or a limit. Here the policy is scripted (`warmstart.scripted_policy`): the *retry*
# script first applies a plausible wrong fix, runs the tests, reads the failure and fixes it for
# real. These scripted episodes, recorded by this same loop, are the warm start's training data.
# The final diff is then graded like every rollout: applied in a fresh sandbox with the hidden tests.


# %%
def show(traj, width=300):
    """The rollout's turns: each assistant tool call, then what the environment answered."""
    for m in traj.messages[2:]:
        if m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            said = "; ".join(f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in c['arguments'].items())})"
                             for c in calls) or f"(no valid call) {m['content'][:120]!r}"
            print(f"assistant> {said}")
        else:
            print("   " + m["content"][:width].replace("\n", "\n   "))
    print(f"-- ended: {traj.end_reason} after {traj.turns} turns; reward {traj.reward} ({traj.eval_status})")


from minicoder.agent.evaluate import grade

scripted = warmstart.scripted_policy({task.instance_id: "retry"})
traj = run_rollouts(scripted, [Job(task)], open_env, tool_cfg=TOOLS, limits=LIMITS)[0]
show(grade(task, traj))
print("\nthe diff that was graded:\n" + traj.diff)

# %% [markdown]
# ## 3 · The warm-started model acts on its own
#
# RL only sharpens what a model can already do sometimes: a group of attempts that all fail (or all
# pass) carries no signal. So the model is first **mid-trained** on scripted episodes like the one
# above (`minicoder warmstart`, the existing train stage with its token-weighted loss on every token
# after the system turn), plus the correct code of other train tasks as copy practice (fixing a toy
# bug is copying one docstring step into the code). Measured on the benchmark's 24 held-out tasks:
# 21% greedy pass@1 and pass@8, but only 4% of the samples pass; below the 15-40% sampled pass@1 that
# RL.md calls learnable, yet with pass@8 far above it, which is what GRPO sharpens (the episodes-only
# recipe, `--code-docs 0`, starts at 12% sampled and gains less). The repository ships that
# checkpoint (`checkpoints/toy-warm`); `minicoder warmstart --out runs/warm` trains it again in about
# 20 minutes, and `warmstart.find_warm_start()` prefers your `runs/warm/final` (or
# `$MINICODER_WARM`) when there is one. Without any, we train a much
# smaller one here (2 layers, hidden 64, no experts) in about a minute: it has learned the tool
# format at best, rarely the fix, so its rollouts below are weak; the mechanics are the same.

# %%
from minicoder.agent.policies import LocalPolicy, load_model_folder

found = warmstart.find_warm_start()  # ($MINICODER_WARM, runs/warm/final, checkpoints/toy-warm)
if found:
    source, WARM = found
    print(f"using the {source} warm start {WARM}")
else:
    tmp = Path(tempfile.mkdtemp(prefix="warm_"))
    t0 = time.perf_counter()
    info = warmstart.warm_start(train[:48], tmp, steps=60 if CI else 120, rows=2, lr=3e-3, progress=False,
                                **warmstart.TINY_MODEL)
    WARM = Path(info["final"])
    print(f"trained a tiny warm start in {time.perf_counter() - t0:.0f}s: {info['episodes']} episodes, "
          f"{info['loss_tokens']} of {info['tokens']} tokens carry loss, final loss {info['loss']:.2f}")
model, tok = load_model_folder(WARM)
print(f"{model.num_parameters() / 1e6:.2f}M parameters, vocabulary {tok.vocab_size}")

# %% [markdown]
# A model rollout, greedy. Token in, token out: the trajectory keeps the ids exactly as sampled
# (`tokens`), a mask that is 1 only on them (prompt, observations and template ids are 0) and the
# sampler's log-probability of each (`logprobs`, the "behaviour" policy the GRPO ratio compares
# against). Nothing is re-tokenized: the ids the trainer sees are the sampled ids.

# %%
policy = LocalPolicy(model, tok, temperature=0.0)
mtraj = grade(task, run_rollouts(policy, [Job(task, seed=1)], open_env, tokenizer=tok, tool_cfg=TOOLS,
                                 limits=LIMITS)[0])
show(mtraj)
n_pol = sum(mtraj.mask)
print(f"\n{len(mtraj.tokens)} tokens: {mtraj.prompt_tokens} prompt, {n_pol} sampled by the policy, "
      f"{len(mtraj.tokens) - mtraj.prompt_tokens - n_pol} from the environment")
first = mtraj.mask.index(1)
print("first sampled ids:", mtraj.tokens[first:first + 12], "->", repr(tok.decode(mtraj.tokens[first:first + 12])))

# %% [markdown]
# ## 4 · The GRPO loss, re-derived
#
# For a group of G rollouts of one task with rewards r_i, the advantage is A_i = r_i - mean(r)
# (no value model: the group is the baseline). Every policy token t of rollout i gets A_i, and with
# the ratio rho = exp(log pi(t) - log pi_behaviour(t)) the loss is PPO's clipped surrogate with a
# higher upper clip, summed over tokens and divided by a constant N * L (Dr. GRPO: N rollouts, a
# fixed length budget L, so long rollouts are not down-weighted):
#
#     loss = sum_i sum_t -min(rho A_i, clip(rho, 1 - 0.2, 1 + 0.28) A_i) / (N L)
#
# Below: four sampled rollouts of one task, graded for real. If the group happens to have no
# variance (all 0 or all 1: GRPO drops such groups) we give it rewards [1, 0, 0, 1] *for this check
# only* (and count the rollouts as submitted: an unfinished one scores 0), so there is a loss to compare. The library's loss also adds the MoE balancing term; we
# switch that off (`aux_loss_coef=0`) so the two computations are the same formula.

# %%
from minicoder.rl.grpo import GRPOConfig, Sample, grpo_step, prepare
from minicoder.rl.pipeline import to_sample
from minicoder.train import TrainConfig, Trainer

policy.temperature = 1.0
group = [grade(task, t) for t in run_rollouts(policy, [Job(task, s, seed=100 + s) for s in range(4)], open_env,
                                               tokenizer=tok, tool_cfg=TOOLS, limits=LIMITS)]
rewards = [t.reward for t in group]
print("rewards of the group:", rewards)
if len(set(rewards)) == 1:
    rewards = [1.0, 0.0, 0.0, 1.0]
    print("no variance: using", rewards, "for the check")
samples = [Sample(**{**to_sample(t, task.instance_id).__dict__, "reward": r, "finished": True})
           for t, r in zip(group, rewards)]  # counted as submitted: an unfinished rollout would score 0
assert all(s.tokens == t.tokens for s, t in zip(samples, group))  # the sampled ids, not a re-encoding
cfg = GRPOConfig(norm_len=384)

# by hand: advantages, per-token log-probs with a plain forward per rollout, the clipped surrogate
mean = sum(rewards) / len(rewards)
adv = [r - mean for r in rewards]
total = 0.0
with torch.no_grad():
    for s, a in zip(samples, adv):
        ids = torch.tensor([s.tokens])
        logp_all = torch.log_softmax(model(input_ids=ids, compute_mtp=False).logits.float(), -1)[0]
        for t in range(len(s.tokens) - 1):
            if s.mask[t + 1]:  # position t predicts token t+1, a policy token
                logp = logp_all[t, s.tokens[t + 1]]
                rho = torch.exp(logp - s.logprobs[t + 1])
                total += -min(rho * a, rho.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * a)
by_hand = float(total) / (len(samples) * cfg.norm_len)

trainer = Trainer(model, None, TrainConfig(steps=1, lr=1e-4, aux_loss_coef=0.0, progress=False))
lib = grpo_step(trainer, samples, cfg, backward=False)["loss"]
print(f"advantages {adv}\nloss by hand {by_hand:.8f}\nlibrary      {lib:.8f}")
assert abs(by_hand - lib) < 1e-5 * max(1.0, abs(lib)), (by_hand, lib)
print("the library's advantages (prepare):", prepare(samples, cfg).advantages)

# %% [markdown]
# ### Lab · exercise `10.grpo_advantage`
#
# Write the group-relative advantage: each reward minus the group's mean, and, when `std_norm` is
# on, divided by the group's *sample* standard deviation (n - 1 in the denominator, as torch.std)
# plus 1e-6. A group of one has advantage 0.

# %%
from minicoder.course import check


def advantages(rewards, std_norm):
    # BEGIN SOLUTION
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    mean = sum(rewards) / n
    out = [r - mean for r in rewards]
    if std_norm:
        std = (sum((r - mean) ** 2 for r in rewards) / (n - 1)) ** 0.5
        out = [a / (std + 1e-6) for a in out]
    return out
    # END SOLUTION


check("10.grpo_advantage", advantages);

# %% [markdown]
# ## 5 · A short GRPO run, live
#
# `minicoder.rl.pipeline.RLRun` is the whole loop: a rollout thread (its own copy of the weights),
# a pool grading each finished rollout in a fresh sandbox while others still run, and the update on
# the main thread. Pipelined (`max_staleness=1`): the rollouts of step s use the weights after update
# s - 2, while step s - 1 is graded and trained on; the ratio against the stored behaviour
# log-probabilities keeps the update correct. The curve below is redrawn after every step.

# %%
from minicoder.rl.pipeline import RLConfig, RLRun

STEPS = 3 if CI else 6
rl_cfg = RLConfig(steps=STEPS, tasks_per_step=2, group=4, lr=3e-4, seed=0, max_staleness=1,
                  grpo=GRPOConfig(norm_len=384), limits=LIMITS, tools=TOOLS)
fresh, _ = load_model_folder(WARM)
run_dir = Path(tempfile.mkdtemp(prefix="rl_"))
run = RLRun(rl_cfg, fresh, tok, train[:16], run_dir, open_env=open_env, progress=False)

fig = go.Figure([go.Scatter(x=[], y=[], name="reward (mean of the step)", mode="lines+markers"),
                 go.Scatter(x=[], y=[], name="zero-variance groups (fraction)", mode="lines+markers")])
fig.update_layout(title="GRPO on the toy family (live)", xaxis_title="step", yaxis_range=[-0.05, 1.05], height=360)
handle = display(fig, display_id=True)


def live(rec):
    for trace, key in zip(fig.data, ("reward_mean", "zero_variance_frac")):
        trace.x = (*trace.x, rec["step"])
        trace.y = (*trace.y, rec[key])
    if handle is not None:  # None outside a notebook kernel
        handle.update(fig)


t0 = time.perf_counter()
recs = run.fit(callback=live)
run.close()
print(f"{STEPS} steps in {time.perf_counter() - t0:.0f}s")
for r in recs:
    print(f"step {r['step']}: reward {r['reward_mean']:.2f}, groups kept {r['groups'] - r['zero_variance_groups']}"
          f"/{r['groups']}, loss {r['loss']:+.4f}, entropy {r['entropy']:.2f}, clip frac {r['clip_frac']:.3f}, "
          f"staleness {r['staleness']}, rollout {r['rollout_s']:.1f}s, update {r['update_s']:.1f}s")

# %% [markdown]
# ## 6 · Samples before and after
#
# The same held-out task, greedy, with the weights we started from and with the weights after the
# short run. A few steps on a handful of tasks rarely change a greedy answer; the benchmark's 3 x 32
# steps sharpen the samples (see the end of this notebook for its numbers).

# %%
h = held[0]
for name, m in (("before", model), ("after", run.trainer.model)):
    m.eval()
    t = grade(h, run_rollouts(LocalPolicy(m, tok, temperature=0.0), [Job(h)], open_env, tokenizer=tok,
                              tool_cfg=TOOLS, limits=LIMITS)[0])
    print(f"=== {name} ===")
    show(t)

# %% [markdown]
# ## 7 · Reward hacking, when the grader would allow it
#
# A policy optimised against a reward finds whatever the reward pays for. Two hostile agents, both
# scripted, neither fixes the bug:
#
# - **edited tests**: changes one line of `test_visible.py` so every check prints "ok", the summary
#   "3 passed, 0 failed", and the exit status is 0;
# - **early exit**: puts `import os; os._exit(0)` at the top of the module, so any test process that
#   imports it ends "successfully" before a single assertion runs.
#
# A *naive* grader runs the visible tests on the agent's repository and trusts what it sees: exit
# status 0 and no FAILED line. Ours (`minicoder.sandbox.reward.evaluate`) applies the diff in a fresh
# sandbox, adds the hidden tests, and reads pytest's JUnit report: a test counts only if the report
# says it passed.

# %%
from dataclasses import replace

from minicoder.agent.policies import ScriptedPolicy, call
from minicoder.gitdiff import apply_to_snapshot
from minicoder.sandbox.reward import evaluate
from minicoder.sandbox.session import open_session

vis = task.environment.files["test_visible.py"]
path = task.metadata["path"]
src = task.environment.files[path]
HACKS = {
    "edited tests": [call("str_replace", path="test_visible.py", old_str="        ok = got == want",
                          new_str="        ok = True"),
                    call("run_tests"), call("submit")],
    "early exit": [call("str_replace", path=path, old_str=src.splitlines()[0],
                        new_str="import os; os._exit(0)\n" + src.splitlines()[0]),
                   call("run_tests"), call("submit")],
}


def naive_grade(task, diff):
    """Runs the visible tests on the agent's repository and trusts them: exit status 0, no FAILED line."""
    files = apply_to_snapshot(dict(task.environment.files), diff)
    with open_session(replace(task, environment=replace(task.environment, files=files))) as s:
        r = s.exec("python test_visible.py", timeout=30)
    return float(r.exit_code == 0 and "FAILED" not in r.stdout)


rows = []
for name, steps in HACKS.items():
    hostile = ScriptedPolicy(lambda st, steps=steps: steps[min(st.turn, len(steps) - 1)], name=name)
    t = run_rollouts(hostile, [Job(task)], open_env, tool_cfg=TOOLS, limits=LIMITS)[0]
    print(f"--- {name}: what the agent saw when it ran the tests:\n   " +
          (next(m["content"] for m in t.messages if m["role"] == "tool" and m.get("name") == "run_tests")[:200]
           or "(nothing)"))
    r = evaluate(task, t.diff)
    rows.append((name, naive_grade(task, t.diff), r.reward, r.status))
gold = evaluate(task, task.patch)
rows.append(("the real fix", naive_grade(task, task.patch), gold.reward, gold.status))
print()
print(f"{'agent':<14}{'naive grader':>14}{'ours':>8}  status")
for name, naive, ours, status in rows:
    print(f"{name:<14}{naive:>14.0f}{ours:>8.0f}  {status}")
assert [r[1] for r in rows] == [1.0, 1.0, 1.0] and [r[2] for r in rows] == [0.0, 0.0, 1.0]

# %% [markdown]
# The naive grader pays both hacks in full; ours pays only the real fix. The tool layer refuses
# more (edits inside `.git/`, network commands with a repository address, git remote edits: the
# hacks the Qwen3-Coder-Next report saw), and the hidden tests never enter the agent's session.

# %% [markdown]
# ## The benchmark's numbers
#
# `bench/rl_toy.py` runs GRPO from the cached warm start for 3 seeds and evaluates the held-out split
# before and after (greedy and sampled pass@1, pass@8), and times pipelined against synchronous
# steps. Its last results, if they are in the repository:

# %%
res_path = Path("../bench/results/rl_toy.json")
if res_path.is_file():
    res = json.loads(res_path.read_text())
    b = res["before"]
    print(f"before: pass@1 greedy {b['pass@1_greedy']:.3f}, sampled {b['pass@1_sampled']:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in b.items() if k.startswith("pass@") and k[5:].isdigit()))
    for s, d in res.get("seeds", {}).items():
        a = d["after"]
        print(f"after, seed {s}: pass@1 greedy {a['pass@1_greedy']:.3f}, sampled {a['pass@1_sampled']:.3f}")
    if "gain" in res:
        g = res["gain"]["pass@1_sampled"]
        print(f"sampled pass@1 gain {g['mean']:+.3f} (min {g['min']:+.3f}, max {g['max']:+.3f})")
else:
    print("no bench/results/rl_toy.json yet: run `python bench/rl_toy.py`")
