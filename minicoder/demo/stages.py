"""The stages of `minicoder demo`, in the order of the data's journey, and their settings.

    corpus -> tokenizer -> pack -> model -> pretrain -> tasks -> midtrain -> rl -> rewards -> eval

Every stage does the real thing at toy size: the stdlib as the corpus, a byte-level BPE, Best-Fit
packing (against concatenation and padding), the toy hybrid MoE model pretrained on the packed rows,
bug-injection tasks synthesized and validated in the sandbox (plus the shipped seed tasks), agentic
mid-training on trajectories of the training tasks, and test-based rewards on held-out tasks (gold,
empty and hostile patches). Tasks are split by *function*: a HumanEval problem is either in training
or held out, never both (holding out only seeds leaks the functions into training).

Settings come in profiles: ``quick`` (the tests; a few minutes on 2 cores), ``default``, and
``full`` (`--full`: bench/rl_toy.py's settings; see `FULL_SETTINGS`). Each stage's settings are
part of its cache key (see pipeline.py), so a changed setting re-runs exactly the stages that
depend on it.

The RL and held-out eval stages live in `minicoder.rl.demo` (by name, so the demo package imports
nothing above it); `minicoder.demo.report` draws ``rl``'s reward curve and ``eval``'s pass@1 before
and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from minicoder.demo.pipeline import Stage, StageContext

ROOT = Path(__file__).resolve().parents[2]
SEED_TASKS = ROOT / "data" / "tasks" / "seed_tasks.jsonl"

PROFILES = ("quick", "default", "full")

# `minicoder demo --full` reproduces one seed of bench/rl_toy.py: per stage, the settings that replace
# the default profile's (a stage not listed keeps them): the shipped warm start (checkpoints/toy-warm,
# the one the benchmark measures from), 32 GRPO steps x 4 tasks x G=8 at lr 3e-4 on train tasks of
# seed 2, then 24 held-out tasks, k=8.
FULL_SETTINGS: dict[str, dict] = {
    "rl": {"warm": "shipped", "warm_path": str(ROOT / "checkpoints" / "toy-warm"), "train_tasks": 2000, "steps": 32,
           "tasks_per_step": 4, "group": 8, "lr": 3e-4, "seed": 0},
    "eval": {"tasks": 24, "k": 8, "seed": 0},
}
FULL_NEEDS = ("rl", "eval")


def _q(options) -> bool:
    return getattr(options, "profile", "default") == "quick"


def humaneval_function(instance_id: str) -> str:
    """`humaneval__HumanEval_12__drop_statement_2` -> `HumanEval_12` (the function a task comes from)."""
    parts = instance_id.split("__")
    return parts[1] if len(parts) > 1 else instance_id


def is_held_out(function: str, every: int = 5) -> bool:
    """A fixed fifth of the HumanEval functions is held out: problem numbers 4, 9, 14, ..."""
    try:
        n = int(function.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return False
    return n % every == every - 1


# --- corpus, tokenizer, packing ---------------------------------------------------------------

def corpus(ctx: StageContext) -> dict:
    from minicoder.data.corpus import CorpusStats, iter_corpus

    s = ctx.settings
    cstats = CorpusStats()
    docs = list(iter_corpus(s["source"], max_files=s["max_files"], seed=0, stats=cstats))
    with open(ctx.dir / "documents.jsonl", "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d.text}) + "\n")
    print(f"corpus: {len(docs)} {s['source']} files, {cstats.bytes / 1e6:.2f} MB, "
          f"{cstats.duplicates} exact duplicates removed")
    return {"documents": ctx.rel(ctx.dir / "documents.jsonl"), "n_documents": len(docs), "bytes": cstats.bytes,
            "duplicates": cstats.duplicates}


def _texts(ctx: StageContext) -> list[str]:
    with open(ctx.path(ctx.inputs["corpus"]["documents"]), encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def tokenizer(ctx: StageContext) -> dict:
    from minicoder.data.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    texts = _texts(ctx)
    tok = train_tokenizer(texts, vocab_size=ctx.settings["vocab_size"])
    path = tok.save(ctx.dir)
    print(f"tokenizer: byte-level BPE, {tok.vocab_size} ids, trained in {time.perf_counter() - t0:.1f}s -> {path}")
    return {"tokenizer": ctx.rel(path), "vocab_size": tok.vocab_size}


def pack(ctx: StageContext) -> dict:
    from minicoder.data.cli import save_npz
    from minicoder.data.packing import pack as pack_lengths
    from minicoder.data.packing import packed_batch
    from minicoder.data.tokenizer import CodeTokenizer

    L = ctx.settings["seq_len"]
    tok = CodeTokenizer.load(ctx.path(ctx.inputs["tokenizer"]["tokenizer"]))
    rag = tok.encode_documents(_texts(ctx))
    n_tok = int(rag.lengths.sum())
    print(f"encoded: {n_tok} tokens ({ctx.inputs['corpus']['bytes'] / max(1, n_tok):.2f} bytes/token)")
    np.savez_compressed(ctx.dir / "tokens.npz", tokens=rag.tokens.astype(np.int32), offsets=rag.offsets)
    result: dict = {"seq_len": L, "tokens": ctx.rel(ctx.dir / "tokens.npz"), "total_tokens": n_tok, "methods": {}}
    print(f"{'method':<8}{'bins':>8}{'lower bd':>10}{'fill':>9}{'dropped':>9}{'split':>7}")
    for method in ("bfd", "concat", "pad"):
        p = pack_lengths(rag.lengths, L, method=method)
        s = p.stats
        print(f"{method:<8}{s.n_bins:>8}{s.lower_bound:>10}{s.fill:>9.2%}{s.tokens_dropped:>9}{s.docs_split:>7}")
        fills = p.bin_lengths() / L
        hist, _ = np.histogram(fills, bins=20, range=(0.0, 1.0))
        result["methods"][method] = {**s.as_dict(), "fill_histogram": hist.tolist()}
        if method == "bfd":
            save_npz(ctx.dir / "packed.npz", packed_batch(p, rag, pad_id=tok.pad_id), p)
    result["packed"] = ctx.rel(ctx.dir / "packed.npz")
    print(f"saved Best-Fit packed sequences -> {ctx.dir / 'packed.npz'}")
    return result


# --- the model and pretraining -----------------------------------------------------------------

def model_config(options, vocab_size: int | None = None):
    """The demo's model: the toy preset with the run's `--set` overrides."""
    from minicoder.config import ModelConfig, apply_overrides

    cfg = apply_overrides(ModelConfig.from_preset("toy"), getattr(options, "overrides", None) or [])
    return cfg.replace(vocab_size=vocab_size) if vocab_size else cfg


def model(ctx: StageContext) -> dict:
    from minicoder.config import ModelConfig
    from minicoder.model.accounting import count_parameters

    rows = {}
    print(f"{'preset':8s} {'layers':>6s} {'hidden':>6s} {'experts':>8s} {'total params':>14s} {'active/token':>14s}")
    cfgs = [(n, ModelConfig.from_preset(n)) for n in ("toy", "small", "full")]
    if ctx.settings["overrides"]:
        cfgs.append(("demo", model_config(ctx.options)))
    for name, cfg in cfgs:
        c = count_parameters(cfg)
        rows[name] = {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "experts": cfg.num_experts,
                      "top_k": cfg.num_experts_per_tok, "total": c.total_without_mtp,
                      "active": c.active_without_embeddings}
        print(f"{name:8s} {cfg.num_hidden_layers:6d} {cfg.hidden_size:6d} {cfg.num_experts:5d}/{cfg.num_experts_per_tok:<2d} "
              f"{c.total_without_mtp / 1e9:13.3f}B {c.active_without_embeddings / 1e9:13.3f}B")
    print("(total without the MTP head; active per token without embedding and lm_head, the '3B' of 80B-A3B)")
    return {"presets": rows}


def _trainer(ctx: StageContext, model, ds, steps: int, lr: float, init_state=None):
    from minicoder.train import TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, rows=ctx.settings.get("rows", 4), lr=lr, warmup_steps=max(1, steps // 10),
                      ckpt_every=ctx.settings.get("ckpt_every", 10), keep_last=2, progress=True)
    tr = Trainer(model, ds, cfg, out_dir=ctx.dir)
    if ctx.resumed and tr.resume():
        print(f"{ctx.name}: continuing from the checkpoint at step {tr.step}")
    return tr


def _train_result(ctx: StageContext, tr, recs_all: list[dict]) -> dict:
    from minicoder.train.checkpoint import latest_checkpoint

    losses = [r["loss"] for r in recs_all if r.get("loss") is not None]
    tps = [r["tokens_per_s"] for r in recs_all if r.get("tokens_per_s")]
    return {"checkpoint": ctx.rel(latest_checkpoint(ctx.dir / "checkpoints")), "metrics": ctx.rel(ctx.dir / "metrics.jsonl"),
            "config": ctx.rel(ctx.dir / "config.json"), "steps": tr.step,
            "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-5:])) if losses else None,
            "tokens_per_s": float(np.median(tps)) if tps else None}


def pretrain(ctx: StageContext) -> dict:
    import torch

    from minicoder.data.packing import Ragged, pack
    from minicoder.data.tokenizer import CodeTokenizer
    from minicoder.model import HybridLM
    from minicoder.train import PackedDataset, target_entropy
    from minicoder.train.metrics import read_metrics

    s = ctx.settings
    tok = CodeTokenizer.load(ctx.path(ctx.inputs["tokenizer"]["tokenizer"]))
    z = np.load(ctx.path(ctx.inputs["pack"]["tokens"]))
    rag = Ragged(z["tokens"].astype(np.int64), z["offsets"].astype(np.int64))
    ds = PackedDataset(rag, pack(rag.lengths, ctx.inputs["pack"]["seq_len"], method="bfd"), pad_id=tok.pad_id)
    cfg = model_config(ctx.options, vocab_size=tok.vocab_size)
    cfg.to_json(ctx.dir / "config.json")
    torch.manual_seed(0)
    net = HybridLM(cfg)
    H = target_entropy(ds)
    tr = _trainer(ctx, net, ds, s["steps"], s["lr"])
    print(f"pretrain: toy model, {net.num_parameters() / 1e6:.2f}M parameters, {len(ds)} packed rows of "
          f"{ds.seq_len}, unigram entropy {H:.3f} nats")
    tr.fit()
    tr.close()
    res = _train_result(ctx, tr, read_metrics(ctx.dir / "metrics.jsonl"))
    res.update(unigram_entropy=H, parameters=net.num_parameters())
    print(f"pretrain: loss {res['first_loss']:.3f} -> {res['last_loss']:.3f} in {tr.step} steps "
          f"(unigram entropy {H:.3f}); checkpoint {res['checkpoint']}")
    if not res["last_loss"] < res["first_loss"]:
        raise RuntimeError(f"pretraining did not lower the loss: {res['first_loss']:.3f} -> {res['last_loss']:.3f}")
    return res


# --- tasks ----------------------------------------------------------------------------------------

def tasks(ctx: StageContext) -> dict:
    from minicoder.data.corpus import humaneval_problems
    from minicoder.record import read_tasks, write_tasks
    from minicoder.tasks.mutate import humaneval_subject
    from minicoder.tasks.pipeline import synth_mutate

    s = ctx.settings
    problems = humaneval_problems()
    picks = [problems[i] for i in s["generate_from"]]
    subjects = [humaneval_subject(p) for p in picks]
    gen_file = ctx.dir / "generated.jsonl"
    summary = synth_mutate(subjects, gen_file, per_subject=s["per_subject"], backend=ctx.options.backend_resolved,
                           workers=2, max_tasks=s["max_generated"], combine=0)
    print(summary.table())
    generated = read_tasks(gen_file) if gen_file.exists() and gen_file.stat().st_size else []
    seed = read_tasks(SEED_TASKS)
    new_ids = {t.instance_id for t in generated}
    pool = generated + [t for t in seed if t.instance_id not in new_ids]
    train = [t for t in pool if not is_held_out(humaneval_function(t.instance_id))]
    held = [t for t in pool if is_held_out(humaneval_function(t.instance_id))]
    # held-out tasks generated in this run first (they show the synthesis), then the seed ones
    held.sort(key=lambda t: (t.instance_id not in new_ids, t.instance_id))
    train = train[:s["max_train"]]
    held = held[:s["max_held_out"]]
    write_tasks(ctx.dir / "train.jsonl", train)
    write_tasks(ctx.dir / "held_out.jsonl", held)
    fn_train = {humaneval_function(t.instance_id) for t in train}
    fn_held = {humaneval_function(t.instance_id) for t in held}
    assert not fn_train & fn_held, "a function is both in training and held out"
    print(f"tasks: {len(generated)} generated now + {len(seed)} seed tasks -> {len(train)} for training "
          f"({len(fn_train)} functions), {len(held)} held out ({len(fn_held)} other functions)")
    return {"train": ctx.rel(ctx.dir / "train.jsonl"), "held_out": ctx.rel(ctx.dir / "held_out.jsonl"),
            "generated": len(generated), "seed": len(seed), "n_train": len(train), "n_held_out": len(held),
            "funnel": summary.funnel, "functions_train": len(fn_train), "functions_held_out": len(fn_held)}


# --- mid-training on agent trajectories ----------------------------------------------------------

def midtrain(ctx: StageContext) -> dict:
    import torch

    from minicoder.config import ModelConfig
    from minicoder.data.tokenizer import CodeTokenizer
    from minicoder.model import HybridLM
    from minicoder.record import read_tasks
    from minicoder.train import trajectory_dataset
    from minicoder.train.checkpoint import load_checkpoint
    from minicoder.train.metrics import read_metrics
    from minicoder.train.trajectories import Trajectory, build_trajectories

    s = ctx.settings
    tok = CodeTokenizer.load(ctx.path(ctx.inputs["tokenizer"]["tokenizer"]))
    traj_file = ctx.dir / "trajectories.jsonl"
    if ctx.resumed and (ctx.dir / "trajectories.done").exists():
        trajs = [Trajectory(**json.loads(line)) for line in traj_file.read_text().splitlines() if line.strip()]
        print(f"midtrain: {len(trajs)} trajectories from the interrupted run")
    else:
        train_tasks = read_tasks(ctx.path(ctx.inputs["tasks"]["train"]))[:s["trajectories"]]
        from minicoder.train.trajectories import sandbox_runner

        # the tests' real output, run in the run's sandbox backend
        trajs, skipped = build_trajectories(train_tasks, runner=sandbox_runner(ctx.options.backend_resolved),
                                            progress=True)
        traj_file.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trajs))
        (ctx.dir / "trajectories.done").write_text("ok\n")
        print(f"midtrain: {len(trajs)} trajectories from {len(train_tasks)} training tasks ({len(skipped)} skipped), "
              f"observations from the {trajs[0].observed if trajs else '-'} runner")
    if not trajs:
        raise RuntimeError("midtrain: no training task gave a trajectory")
    ds = trajectory_dataset(trajs, tok, ctx.settings["seq_len"])
    cfg = ModelConfig.from_json(ctx.path(ctx.inputs["pretrain"]["config"]))
    cfg.to_json(ctx.dir / "config.json")
    torch.manual_seed(0)
    net = HybridLM(cfg)
    net.load_state_dict(load_checkpoint(ctx.path(ctx.inputs["pretrain"]["checkpoint"]))["model"])
    tr = _trainer(ctx, net, ds, s["steps"], s["lr"])
    print(f"midtrain: from the pretrained checkpoint, {len(ds)} packed rows of {ds.seq_len}, "
          f"{int(ds.trainable.tokens.sum())} assistant tokens trained on")
    tr.fit()
    tr.close()
    res = _train_result(ctx, tr, read_metrics(ctx.dir / "metrics.jsonl"))
    res.update(trajectories=len(trajs), tokenizer=ctx.inputs["tokenizer"]["tokenizer"])
    print(f"midtrain: assistant-token loss {res['first_loss']:.3f} -> {res['last_loss']:.3f} in {tr.step} steps; "
          f"checkpoint {res['checkpoint']}")
    return res


# --- rewards on held-out tasks -------------------------------------------------------------------

def rewards(ctx: StageContext) -> dict:
    from minicoder.record import read_tasks
    from minicoder.sandbox import evaluate
    from minicoder.sandbox.examples import demo_task, hostile_patches

    backend = ctx.options.backend_resolved
    held = read_tasks(ctx.path(ctx.inputs["tasks"]["held_out"]))[:ctx.settings["tasks"]]
    calc = demo_task()
    hostile = hostile_patches()
    picks = [n for n in ("fake_passed", "conftest", "sys_exit_import", "edit_tests", "network") if n in hostile]
    plan = [(t, [("gold patch", t.patch), ("empty patch", "")]) for t in held]
    plan.append((calc, [("gold patch", calc.patch)] + [(f"hack: {n}", hostile[n].patch) for n in picks[:4]]))
    rows = []
    for t, tries in plan:
        for label, patch in tries:
            r = evaluate(t, patch, backend=backend)
            rows.append({"task": t.instance_id, "attempt": label, "reward": r.reward, "fraction": r.fraction,
                         "status": r.status, "seconds": round(r.duration_s, 2)})
    print(f"{'task':38s} {'attempt':24s} {'reward':>6s} {'fraction':>8s}  status")
    for r in rows:
        print(f"{r['task'][:38]:38s} {r['attempt'][:24]:24s} {r['reward']:6.1f} {r['fraction']:8.2f}  {r['status']}")
    with open(ctx.dir / "rewards.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    gold = [r for r in rows if r["attempt"] == "gold patch"]
    wrong = [r for r in rows if r["attempt"] != "gold patch"]
    if not all(r["reward"] == 1.0 for r in gold) or any(r["reward"] != 0.0 for r in wrong):
        raise RuntimeError("rewards stage: a gold patch did not score 1, or an empty / hostile patch scored")
    return {"rows": rows, "backend": backend, "gold_reward": float(np.mean([r["reward"] for r in gold])),
            "wrong_reward": float(np.mean([r["reward"] for r in wrong])) if wrong else 0.0,
            "held_out_tasks": len(held), "seconds_per_evaluation": float(np.mean([r["seconds"] for r in rows]))}


# --- the stage list ---------------------------------------------------------------------------------

def _settings_corpus(o) -> dict:
    return {"source": "stdlib", "max_files": 80 if _q(o) else 300}


def _settings_pretrain(o) -> dict:
    quick = _q(o)
    return {"steps": getattr(o, "train_steps", None) or (30 if quick else 150), "lr": 3e-3, "rows": 4,
            "ckpt_every": 5 if quick else 25, "overrides": list(o.overrides or [])}


def _settings_tasks(o) -> dict:
    quick = _q(o)
    return {"generate_from": [4, 5] if quick else [0, 4, 5, 9, 10, 14], "per_subject": 2,
            "max_generated": 2 if quick else 6, "max_train": 120, "max_held_out": 20,
            "backend": o.backend_resolved}


def _settings_midtrain(o) -> dict:
    quick = _q(o)
    return {"trajectories": 6 if quick else 48, "steps": 8 if quick else 60, "lr": 1e-3, "rows": 2,
            "seq_len": 512 if quick else 1024,
            "ckpt_every": 5, "backend": o.backend_resolved}


def _settings_rl(o) -> dict:
    from minicoder.rl.demo import settings, with_warm_digest

    s = settings(_q(o), o.backend_resolved)
    if getattr(o, "profile", "default") == "full":  # the digest must be of the model --full really uses
        s.update(FULL_SETTINGS["rl"])
    return with_warm_digest(s)


def _settings_eval(o) -> dict:
    from minicoder.rl.demo import eval_settings

    return eval_settings(_q(o), o.backend_resolved)


def full_profile_problem(stages: list[Stage]) -> str | None:
    """Why `--full` cannot run with these stages (None when it can)."""
    names = [s.name for s in stages]
    missing = [n for n in FULL_NEEDS if n not in names]
    if missing:
        return (f"--full reproduces bench/rl_toy.py, which needs the demo's {' and '.join(missing)} stage(s); "
                "they are not in this version of minicoder yet (the HOOK entries in minicoder/demo/stages.py). "
                "Run `minicoder demo` (the default profile) or `minicoder demo --quick`.")
    unset = [n for n in FULL_NEEDS if n not in FULL_SETTINGS]
    if unset:
        return (f"--full: FULL_SETTINGS in minicoder/demo/stages.py has no settings for {', '.join(unset)} "
                "(they must be bench/rl_toy.py's); run `minicoder demo` or `minicoder demo --quick`.")
    warm = FULL_SETTINGS["rl"].get("warm_path")
    if warm and not (Path(warm) / "config.json").is_file():
        return (f"--full starts GRPO from the shipped warm start {warm}, which is not there; restore it "
                "(`git checkout -- checkpoints/toy-warm`), or train one with `minicoder warmstart --out runs/warm` "
                "(about 20 minutes on 2 cores) and copy runs/warm/final there.")
    return None


def _with_full_profile(stage: Stage) -> Stage:
    """The stage with settings that, under ``--full``, are the default profile's updated by FULL_SETTINGS."""
    base = stage.settings_for

    def settings(o) -> dict:
        s = base(o)
        if getattr(o, "profile", "default") == "full":
            s.update(FULL_SETTINGS.get(stage.name, {}))
        return s

    return Stage(stage.name, stage.fn, deps=stage.deps, settings=settings, help=stage.help)


STAGES: list[Stage] = [
    Stage("corpus", corpus, settings=_settings_corpus, help="stdlib source files, deduplicated"),
    Stage("tokenizer", tokenizer, deps=("corpus",), settings=lambda o: {"vocab_size": 2048 if _q(o) else 4096},
          help="byte-level BPE with Qwen's special tokens"),
    Stage("pack", pack, deps=("corpus", "tokenizer"), settings={"seq_len": 256},
          help="Best-Fit packing vs concatenation vs padding"),
    Stage("model", model, settings=lambda o: {"overrides": list(o.overrides or [])},
          help="parameter accounting of the presets (and of --set)"),
    Stage("pretrain", pretrain, deps=("tokenizer", "pack"), settings=_settings_pretrain,
          help="the toy hybrid MoE model on the packed rows"),
    Stage("tasks", tasks, settings=_settings_tasks, help="bug-injection tasks validated in the sandbox + seed tasks"),
    Stage("midtrain", midtrain, deps=("tokenizer", "pretrain", "tasks"), settings=_settings_midtrain,
          help="agentic mid-training on trajectories of the training tasks"),
    Stage("rl", "minicoder.rl.demo:stage", settings=_settings_rl,
          help="GRPO in live sandbox sessions on the toy task family, from a warm start"),
    Stage("rewards", rewards, deps=("tasks",), settings=lambda o: {"tasks": 2 if _q(o) else 4,
                                                                   "backend": o.backend_resolved},
          help="sandbox rewards on held-out tasks: gold, empty and hostile patches"),
    Stage("eval", "minicoder.rl.demo:evaluate", deps=("rl",), settings=_settings_eval,
          help="held-out pass@1 (greedy, sampled) and pass@k before and after RL"),
]
STAGES = [_with_full_profile(s) for s in STAGES]
