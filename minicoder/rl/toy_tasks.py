"""A procedurally generated task family a toy model can learn from: small functions, one injected bug.

Each task is a repository of two files: `solution.py`, a module with one small function (and, for
some shapes, a helper) whose docstring states what it computes, and `test_visible.py`, a few checks
the agent may run (`python test_visible.py` prints one line per check; pytest runs them too).
The hidden tests (`test_hidden.py`, in the task's `test_patch`) check more inputs and decide the
reward. One bug is injected, of one of the kinds mutation testing uses:

  operator     a binary operator replaced (`+` -> `-`, ...)
  constant     an off-by-one constant (`* 3` -> `* 4`)
  compare      a flipped comparison (`>` -> `<`)
  swap_args    the arguments of a call swapped (`_h(a, b)` -> `_h(b, a)`)
  return_var   the wrong variable returned (`return t` -> `return s`)

The docstring is the specification: it says what the function returns and then spells out the
correct body step by step ("Return (a + b) * 3. Steps: s = a + b; t = s * 3; return t"), so the bug is
the one line that disagrees with its docstring, the fix is the docstring's version of that line, and
the visible tests show which behaviour is wrong.

Splits ("train" / "heldout") differ in the functions and in the mutation parameters, not only in the
seed: disjoint pools of function names, and held-out mutations that train never makes (constants off
by 2 instead of 1, comparisons flipped to the non-strict opposite, operators replaced by `//` or `%`,
the second argument returned, a different helper called in one argument order). In train every bug
is ambiguous without the docstring (an operator becomes either other operator, a constant moves
either way, both comparison directions and both argument orders occur in correct code), so a model
cannot fit the train split by memorising "a `-` here was a `+`": the one rule that fits is "make
the line agree with its docstring step", which is also what solves heldout.

Why shared names: the first version also drew the parameter, local and helper names and the
constants from disjoint per-split pools. A from-scratch model of a few million parameters, trained
for minutes on a CPU, never learned to copy a line it had not seen from its context (which is what
an edit of an unseen name needs): after 500 steps it wrote train-split lines into held-out edits,
0% pass@1 on both splits. So the family keeps what makes a task a task (which line is wrong, what
the docstring asks for, which way the mutation went) and drops the unseen vocabulary, and every
module is `solution.py`: the toy model learns to fix code, not to copy identifiers. Measured with the
shared names and a docstring that only summarised ("Return (a + b) * 3.") (`minicoder warmstart`
defaults, 16 tasks, greedy + 2 samples each): pass@1 31% greedy and 28% sampled on train-split tasks
of its own seed, 0% on heldout. It had learned the train mutation tables, not to read code against
its docstring: deriving `s = a + b` from "(a + b) * 3" and spotting the mismatch was beyond it. Hence
the step-by-step docstring: a fix is now a copy of the one docstring step that the code gets wrong, a
skill that does not depend on the mutation tables and so can transfer to heldout. Measured with this
family (the warm start of `minicoder/rl/warmstart.py`, 16 held-out tasks, greedy + 4 samples):
pass@1 31% greedy and 19% sampled, pass@4 38% on heldout; solved are mostly the argument swaps and
wrong returned variables, the copy-from-docstring fixes (operators, constants, comparisons) rarely.

Generation is deterministic in (split, seed, index). Every task is checked here by running the
generated code in-process (it is ours, trusted): the gold function passes every visible and hidden
check, the buggy one fails at least one of each, and no constant answer passes the hidden checks.
The real check is `minicoder.tasks.validate.validate_task` in the sandbox (gold passes, empty fails,
trivial patches fail), which the tests and the benchmark run.
The task metadata keeps what the scripted warm-start policy needs (the buggy and the fixed line, a
plausible wrong fix); it is never shown to the agent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from minicoder.gitdiff import file_diff as make_diff
from minicoder.record import Environment, Task

KINDS = ("operator", "constant", "compare", "swap_args", "return_var")
SPLITS = ("train", "heldout")
VISIBLE_CMD = "python test_visible.py"
MODULE = "solution"  # every task's code lives in solution.py: the function and its bug vary, the file does not

_NAMES = {
    "train": ["mix", "blend", "scale", "shift", "merge", "fold", "tally", "score", "weigh", "combine",
              "adjust", "grow", "span", "stretch", "pack", "tilt", "lift", "spread", "sway", "morph"],
    "heldout": ["warp", "fuse", "twist", "churn", "bend", "knit"],
}
# The names inside a function and its constants are shared by the splits (see "Why shared names").
_PARAMS = {"train": [("a", "b")], "heldout": [("a", "b")]}
_LOCALS = {"train": ("s", "t", "r"), "heldout": ("s", "t", "r")}
_HELPERS = {"train": ["_h"], "heldout": ["_h"]}
_CONSTS = {"train": [3, 4, 5, 6], "heldout": [3, 4, 5, 6]}
# Mutation parameters, per split. In train every bug is ambiguous without the docstring (an operator
# becomes any other operator, a constant moves up or down, both comparison directions and both helper
# argument orders occur in gold code, two different wrong variables are returned), so the only rule that
# fits the train tasks is "make the line agree with its docstring step", which is also the held-out rule.
# Held-out mutations are ones train never makes: constants off by 2 (not 1), comparisons flipped to
# the non-strict opposite, the second argument returned, operators replaced by `//` or `%` (train code
# never contains them: the held-out old_str is a copy of a line unlike any seen, the fix still a copy
# of the docstring step).
_OP_SWAP_HELDOUT = {"+": "//", "-": "%", "*": "//"}
_OFF_BY = {"train": (-1, +1), "heldout": (-2, +2)}
_CMP_FLIP = {"train": {">": "<", "<": ">"}, "heldout": {">": "<=", "<": ">="}}
_HELPER_BODY = {"train": "x * {k} - y", "heldout": "x - {k} * y"}  # the helper itself differs per split
_OP_WORD = {"+": "plus", "-": "minus", "*": "times"}


def _op_swap(rng: random.Random, split: str, op: str) -> tuple[str, str]:
    """(the mutated operator, a decoy operator) for an operator bug on `op`."""
    new = rng.choice([o for o in "+-*" if o != op]) if split == "train" else _OP_SWAP_HELDOUT[op]
    return new, next(o for o in "+-*" if o not in (op, new))


def _off_by(rng: random.Random, split: str, c: int) -> tuple[int, int]:
    """(the mutated constant, a decoy constant) for an off-by-n bug on `c`."""
    d = rng.choice(_OFF_BY[split])
    return c + d, c + 2 * d


def _ret_var(rng: random.Random, split: str, local: str, args: tuple[str, str]) -> tuple[str, str]:
    """(buggy line, decoy line) of a return_var bug: the last intermediate or the first argument is
    returned in train, the second argument in heldout."""
    if split == "train":
        wrong, decoy = rng.sample([local, args[0]], 2)
    else:
        wrong, decoy = args[1], local
    return f"    return {wrong}", f"    return {decoy}"


@dataclass
class Program:
    """One generated function: source lines, the buggy variant and what the scripted policy needs."""

    name: str
    params: tuple[str, str]
    lines: list[str]  # the correct module source, line by line
    bug_line: int  # index into lines of the line the bug changes
    buggy: str  # the buggy version of that line
    decoy: str  # a plausible but wrong fix of the buggy line (for retry trajectories)
    kind: str
    fn: Callable | None = None  # compiled correct function (in-process checks only)


def _arith(rng: random.Random, split: str, name: str, ps: tuple[str, str], kind: str) -> Program | None:
    a, b = ps
    s, t, _ = _LOCALS[split]
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    c = rng.choice(_CONSTS[split])
    body = [f"{s} = {a} {op1} {b}", f"{t} = {s} {op2} {c}", f"return {t}"]
    lines = [f"def {name}({a}, {b}):", _docline(f"Return ({a} {op1} {b}) {op2} {c}", body)] + [f"    {x}" for x in body]
    if kind == "operator":
        which = rng.choice([2, 3])
        op = op1 if which == 2 else op2
        new, other = _op_swap(rng, split, op)
        buggy = lines[which].replace(f" {op} ", f" {new} ", 1)
        decoy = lines[which].replace(f" {op} ", f" {other} ", 1)
        return Program(name, ps, lines, which, buggy, decoy, kind)
    if kind == "constant":
        wrong, decoy_c = _off_by(rng, split, c)
        return Program(name, ps, lines, 3, f"    {t} = {s} {op2} {wrong}", f"    {t} = {s} {op2} {decoy_c}", kind)
    if kind == "return_var":
        return Program(name, ps, lines, 4, *_ret_var(rng, split, s, ps), kind)
    return None


def _pick(rng: random.Random, split: str, name: str, ps: tuple[str, str], kind: str) -> Program | None:
    a, b = ps
    m, r, _ = _LOCALS[split]
    cmp = rng.choice("<>")
    op = rng.choice("+-*")
    c = rng.choice(_CONSTS[split])
    which = "larger" if cmp == ">" else "smaller"
    body = [f"if {a} {cmp} {b}:", f"    {m} = {a}", "else:", f"    {m} = {b}", f"{r} = {m} {op} {c}", f"return {r}"]
    spec = [f"if {a} {cmp} {b}: {m} = {a}", f"else: {m} = {b}", *body[4:]]
    lines = [f"def {name}({a}, {b}):", _docline(f"Return the {which} of {a} and {b}, {_OP_WORD[op]} {c}", spec)]
    lines += [f"    {x}" for x in body]
    if kind == "compare":
        new = _CMP_FLIP[split][cmp]
        return Program(name, ps, lines, 2, f"    if {a} {new} {b}:", f"    if {a} == {b}:", kind)
    if kind == "constant":
        wrong, decoy_c = _off_by(rng, split, c)
        return Program(name, ps, lines, 6, f"    {r} = {m} {op} {wrong}", f"    {r} = {m} {op} {decoy_c}", kind)
    if kind == "operator":
        new, other = _op_swap(rng, split, op)
        return Program(name, ps, lines, 6, f"    {r} = {m} {new} {c}", f"    {r} = {m} {other} {c}", kind)
    if kind == "return_var":
        return Program(name, ps, lines, 7, *_ret_var(rng, split, m, ps), kind)
    return None


def _helper(rng: random.Random, split: str, name: str, ps: tuple[str, str], kind: str) -> Program | None:
    a, b = ps
    d, r, _ = _LOCALS[split]
    h = rng.choice(_HELPERS[split])
    k = rng.choice(_CONSTS[split])
    op = rng.choice("+-*")
    c = rng.choice(_CONSTS[split])
    x, y = rng.choice([(a, b), (b, a)]) if split == "train" else (b, a)  # both orders in train gold code
    body = [f"{d} = {h}({x}, {y})", f"{r} = {d} {op} {c}", f"return {r}"]
    hbody = _HELPER_BODY[split]
    spec = [f"{h}(x, y): return {hbody.format(k=k)}", *body]
    lines = [f"def {h}(x, y):", f"    return {hbody.format(k=k)}", "", "", f"def {name}({a}, {b}):",
             _docline(f"Return {h}({x}, {y}) {op} {c}", spec)] + [f"    {x_}" for x_ in body]
    if kind == "swap_args":
        return Program(name, ps, lines, 6, f"    {d} = {h}({y}, {x})", f"    {d} = {h}({x}, {x})", kind)
    if kind == "constant":
        wrong, decoy_k = _off_by(rng, split, k)
        return Program(name, ps, lines, 1, f"    return {hbody.format(k=wrong)}", f"    return {hbody.format(k=decoy_k)}", kind)
    if kind == "operator":
        new, other = _op_swap(rng, split, op)
        return Program(name, ps, lines, 7, f"    {r} = {d} {new} {c}", f"    {r} = {d} {other} {c}", kind)
    if kind == "return_var":
        return Program(name, ps, lines, 8, *_ret_var(rng, split, d, ps), kind)
    return None


SHAPES = (_arith, _pick, _helper)


def _docline(summary: str, spec: list[str]) -> str:
    """The docstring: what the function returns, then the correct body, step by step (the spec)."""
    return f'    """{summary}. Steps: {"; ".join(spec)}"""'


def _source(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _compile(src: str, name: str) -> Callable:
    ns: dict = {}
    exec(compile(src, f"<toy {name}>", "exec"), ns)  # noqa: S102 -- our own generated code, never a model's
    return ns[name]


def _safe(fn: Callable, args: tuple) -> object:
    try:
        return fn(*args)
    except Exception as e:  # the buggy variant may raise
        return f"{type(e).__name__}"


def _visible_file(module: str, name: str, cases: list[tuple[tuple[int, int], int]]) -> str:
    return f'''"""Visible checks for `{name}` (run: python test_visible.py; pytest runs them too)."""
from {module} import {name}

CASES = {cases!r}


def test_{name}():
    for args, want in CASES:
        assert {name}(*args) == want, f"{name}{{args}} returned {{{name}(*args)!r}}, expected {{want!r}}"


if __name__ == "__main__":
    failed = 0
    for args, want in CASES:
        try:
            got = {name}(*args)
        except Exception as e:
            got = f"{{type(e).__name__}}: {{e}}"
        ok = got == want
        failed += not ok
        print(f"{name}{{args}} == {{want!r}}: " + ("ok" if ok else f"FAILED, got {{got!r}}"))
    print(f"{{len(CASES) - failed}} passed, {{failed}} failed")
    raise SystemExit(1 if failed else 0)
'''


def _hidden_file(module: str, name: str, cases: list[tuple[tuple[int, int], int]]) -> str:
    out = [f'"""Hidden tests for `{name}`."""', f"from {module} import {name}", ""]
    for i, (args, want) in enumerate(cases):
        out += ["", f"def test_case_{i}():", f"    assert {name}{args!r} == {want!r}"]
    return "\n".join(out) + "\n"


def make_task(split: str, seed: int, index: int) -> Task | None:
    """Task number `index` of (split, seed), or None when the draw gives no checkable bug (rare)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"toy:{split}:{seed}:{index}")
    kind = KINDS[index % len(KINDS)]  # balanced bug kinds
    shapes = {"compare": [_pick], "swap_args": [_helper]}.get(kind, list(SHAPES))
    shape = rng.choice(shapes)
    name = rng.choice(_NAMES[split]) + f"_{rng.randrange(100):02d}"
    ps = rng.choice(_PARAMS[split])
    prog = shape(rng, split, name, ps, kind)
    if prog is None:
        return None
    gold = _source(prog.lines)
    bug_lines = list(prog.lines)
    bug_lines[prog.bug_line] = prog.buggy
    buggy = _source(bug_lines)
    if buggy == gold or prog.decoy in (prog.buggy, prog.lines[prog.bug_line]):
        return None
    if bug_lines.count(prog.buggy) != 1 or prog.lines.count(prog.decoy) != 0:
        return None  # the scripted fix replaces the line by exact match: it must be unique
    decoy_lines = list(prog.lines)
    decoy_lines[prog.bug_line] = prog.decoy
    if buggy.count(prog.buggy.strip()) != 1 or _source(decoy_lines).count(prog.decoy.strip()) != 1:
        return None  # ... and so must the line without its indentation (what the scripted edit names)
    f_gold, f_bug, f_decoy = (_compile(s, name) for s in (gold, buggy, _source(decoy_lines)))
    pool = sorted({(rng.randrange(-3, 10), rng.randrange(-3, 10)) for _ in range(40)})
    rng.shuffle(pool)
    # visible: 3 checks, at least one the bug fails (and one the decoy fails); hidden: 6 more checks
    fails = [p for p in pool if _safe(f_bug, p) != f_gold(*p)]
    if not fails or not any(_safe(f_decoy, p) != f_gold(*p) for p in pool):
        return None
    visible = [fails[0]] + [p for p in pool if p != fails[0]][:2]
    if all(_safe(f_decoy, p) == f_gold(*p) for p in visible):
        visible[-1] = next(p for p in pool if _safe(f_decoy, p) != f_gold(*p) and p not in visible)
    rest = [p for p in pool if p not in visible]
    hidden = ([p for p in rest if _safe(f_bug, p) != f_gold(*p)][:2] + [p for p in rest if _safe(f_bug, p) == f_gold(*p)][:2])
    hidden += [p for p in rest if p not in hidden][:6 - len(hidden)]
    vis_cases = [(p, f_gold(*p)) for p in visible]
    hid_cases = [(p, f_gold(*p)) for p in hidden]
    if (not any(_safe(f_bug, p) != w for p, w in hid_cases) or len({w for _, w in hid_cases}) < 3
            or any(all(w == k for _, w in hid_cases) for k in (0, True, False, None))):
        return None
    module = MODULE
    path = f"{module}.py"
    files = {path: buggy, "test_visible.py": _visible_file(module, name, vis_cases)}
    test_patch = make_diff("test_hidden.py", None, _hidden_file(module, name, hid_cases))
    statement = (f"`{name}` in `{path}` does not do what its docstring says, and `test_visible.py` fails. "
                 f"Find the bug and fix the code (not the tests), check it with the tests, then submit.")
    return Task(
        instance_id=f"toy__{split}__{seed}__{index:05d}", repo="minicoder/toy", base_commit="",
        patch=make_diff(path, buggy, gold), test_patch=test_patch, problem_statement=statement,
        FAIL_TO_PASS=[f"test_hidden.py::test_case_{i}" for i, (p, w) in enumerate(hid_cases) if _safe(f_bug, p) != w],
        PASS_TO_PASS=[f"test_hidden.py::test_case_{i}" for i, (p, w) in enumerate(hid_cases) if _safe(f_bug, p) == w],
        environment=Environment(files=files, test_cmd="python -m pytest", timeout_s=20.0),
        source="mutation",
        metadata={"family": "toy", "split": split, "kind": kind, "shape": shape.__name__.strip("_"), "path": path, "function": name, "visible_test_cmd": VISIBLE_CMD,
                  "buggy_line": prog.buggy, "fixed_line": prog.lines[prog.bug_line], "decoy_line": prog.decoy,
                  "visible_cases": [[list(p), w] for p, w in vis_cases]},
    )


def generate(split: str, n: int, seed: int = 0) -> list[Task]:
    """`n` tasks of a split (deterministic in seed); draws that give no checkable bug are skipped."""
    out: list[Task] = []
    i = 0
    while len(out) < n:
        t = make_task(split, seed, i)
        if t is not None:
            out.append(t)
        i += 1
        if i > 20 * n + 100:
            raise RuntimeError(f"the toy family gave only {len(out)} of {n} tasks for split {split!r}")
    return out
