"""Classroom labs: every notebook's reference solution passes its checker, plausible wrong answers
fail with a specific hint, and `make lab` removes the solutions but keeps the checkers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minicoder.course import EXERCISES, check, exercise_name, strip_solutions, write_lab

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def exercise_cells() -> list[tuple[str, str, str]]:
    """(notebook, exercise name, cell source) of every code cell holding a solution."""
    import jupytext

    out = []
    for src in SOURCES:
        for cell in jupytext.read(src).cells:
            if cell.cell_type == "code" and "# BEGIN SOLUTION" in cell.source:
                out.append((src.stem, exercise_name(cell.source), cell.source))
    return out


def test_notebooks_01_to_11_each_have_an_exercise_and_every_checker_a_cell():
    cells = exercise_cells()
    per_nb = {nb[:2] for nb, _, _ in cells}
    assert {f"{i:02d}" for i in range(1, 12) if i != 10} <= per_nb
    names = {n for _, n, _ in cells}
    assert None not in names
    assert set(EXERCISES) - names <= {"10.grpo_advantage"}  # notebook 10 is written with the RL stage
    assert all(1 <= sum(nb == n for nb, _, _ in cells) <= 3 for n in {nb for nb, _, _ in cells})


def test_each_exercise_sits_at_its_key_step_not_at_the_end():
    """The exercise comes right after the section that teaches its step: a later numbered section of
    the same notebook follows it, and it is not in the notebook's last quarter."""
    import jupytext

    for src in SOURCES:
        cells = jupytext.read(src).cells
        at = [i for i, c in enumerate(cells) if c.cell_type == "code" and "# BEGIN SOLUTION" in c.source]
        for i in at:
            later = [c.source for c in cells[i + 1:] if c.cell_type == "markdown"]
            assert any(re.search(r"^#{2,3} ", s, re.M) for s in later), f"{src.stem}: exercise at the end"
            assert i < 0.75 * len(cells), f"{src.stem}: the exercise is cell {i} of {len(cells)}"


@pytest.mark.slow
def test_every_reference_solution_in_the_notebooks_passes_its_checker(tmp_path):
    """Each solution cell runs on its own (as in the notebook, in a fresh interpreter; the Triton
    one in the interpreter when there is no GPU) and its function passes the checker."""
    script = tmp_path / "run_cells.py"
    cells = exercise_cells()
    script.write_text(
        "import json, re, sys\n"
        "from minicoder.course import check\n"
        f"cells = {json.dumps(cells)}\n"
        "results = {}\n"
        "for nb, name, src in cells:\n"
        "    ns = {}\n"
        "    exec(compile(src, nb, 'exec'), ns)\n"
        "    fn = re.search(r'check\\(\\s*\"[^\"]+\"\\s*,\\s*([A-Za-z_][A-Za-z0-9_]*)', src).group(1)\n"
        "    r = check(name, ns[fn], verbose=False)\n"
        "    results[name] = [r.passed, r.message, r.cases]\n"
        "print('RESULTS ' + json.dumps(results))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert set(results) == {n for _, n, _ in cells}
    for name, (passed, message, cases) in results.items():
        assert passed, f"{name}: {message}"
        assert cases >= 3, f"{name} checked only {cases} cases"


# --- plausible wrong answers, and the hint each one must get ------------------------------------------

def first_fit(lengths, seq_len):
    pieces = sorted(((d, s, min(n, s + seq_len)) for d, n in enumerate(lengths) for s in range(0, n, seq_len)),
                    key=lambda p: p[1] - p[2])
    bins, room = [], []
    for d, s, e in pieces:  # no decreasing sort problem here: the wrong part is *first* fit, not best fit
        b = next((i for i in range(len(bins)) if room[i] >= e - s), None)
        if b is None:
            bins.append([])
            room.append(seq_len)
            b = len(bins) - 1
        bins[b].append((d, s, e))
        room[b] -= e - s
    return bins


def no_split(lengths, seq_len):
    return [[(d, 0, n)] for d, n in enumerate(lengths)]


def step_no_decay(S, q, k, v, g, beta):
    pred = torch.einsum("bhkv,bhk->bhv", S, k)
    S = S + k[..., :, None] * (beta[..., None] * (v - pred))[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", S, q), S


def step_read_old_state(S, q, k, v, g, beta):
    S = S * g.exp()[..., None, None]
    o = torch.einsum("bhkv,bhk->bhv", S, q)
    pred = torch.einsum("bhkv,bhk->bhv", S, k)
    return o, S + k[..., :, None] * (beta[..., None] * (v - pred))[..., None, :]


def step_transposed(S, q, k, v, g, beta):
    o, S2 = step_read_old_state(S, q, k, v, g, beta)
    return o, S2.transpose(-1, -2)


def gate_whole_halves(qg, attn, num_heads):
    return attn * torch.sigmoid(qg.chunk(2, dim=-1)[1])


def route_unnormalised(logits, k, norm):
    w, ids = torch.topk(torch.softmax(logits, -1), k, -1)
    return ids, w


def route_naive_softmax(logits, k, norm):
    e = logits.exp()
    w, ids = torch.topk(e / e.sum(-1, keepdim=True), k, -1)
    return ids, w / w.sum(-1, keepdim=True) if norm else w


def route_topk_of_logits_then_softmax(logits, k, norm):
    v, ids = torch.topk(logits, k, -1)
    return ids, torch.softmax(v, -1) if norm else torch.softmax(v, -1) * 0.5


def layout_attention_first(n, every):
    return ["full_attention" if i % every == 0 else "linear_attention" for i in range(n)]


def row_sums_no_tail(x, BLOCK):
    full = (x.shape[1] // BLOCK) * BLOCK
    return x[:, :full].sum(1)


def labels_shift_only(input_ids, doc_ids):
    out = np.full_like(input_ids, -100)
    out[:-1] = input_ids[1:]
    return out


def labels_keep_padding(input_ids, doc_ids):
    out = np.full_like(input_ids, -100)
    same = doc_ids[1:] == doc_ids[:-1]
    out[:-1][same] = input_ids[1:][same]
    return out


def invert_if_only(source):
    import ast

    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            old = node.test
            node.test = ast.UnaryOp(ast.Not(), old)
            out.append(ast.unparse(tree))
            node.test = old
    return out


def reward_only_fail_to_pass(xml, f2p, p2p):
    return 1.0 if b"<failure" not in xml or not f2p else 0.0


def reward_ignores_missing(xml, f2p, p2p):
    import xml.etree.ElementTree as ET

    bad = {next(p.get("value") for p in c.iter("property")) for c in ET.fromstring(xml).iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None}
    return 0.0 if bad & set(f2p + p2p) else 1.0


def exploit_single_payload(db):
    conn = db.connect()
    db.add_visit(conn, "xray", "alice")
    try:
        got = db.visits_of(conn, "nobody' OR '1'='1")
    except Exception:
        return
    assert got == []


def exploit_any_error_is_an_attack(db):
    conn = db.connect()
    db.add_visit(conn, "xray", "alice")
    for payload in ("nobody' OR '1'='1", 'nobody" OR "1"="1', "x' UNION SELECT name FROM visits --"):
        try:
            got = db.visits_of(conn, payload)
        except Exception:
            raise AssertionError("the attack crashed the query") from None
        assert got == []


def exploit_functional_only(db):
    conn = db.connect()
    db.add_visit(conn, "b", "alice")
    db.add_visit(conn, "a", "alice")
    assert db.visits_of(conn, "alice") == ["a", "b"]


def exploit_uncaught_error(db):
    db.visits_of(db.connect(), "x' UNION SELECT token FROM secrets --")


WRONG = [
    ("01.best_fit_pack", first_fit, ["Best-Fit Decreasing gives [4, 10, 12]", "LEAST room"]),
    ("01.best_fit_pack", no_split, ["tokens > seq_len"]),
    ("02.delta_rule_step", step_no_decay, ["without decay: multiply S by exp(g)"]),
    ("02.delta_rule_step", step_read_old_state, ["o differs", "read from the UPDATED state", "first at index"]),
    ("02.delta_rule_step", step_transposed, ["S_new has shape", "a transpose"]),
    ("03.output_gate", gate_whole_halves, ["per head", "[B, T, H, 2*D]"]),
    ("04.topk_routing", route_unnormalised, ["must sum to 1", "divide by their sum"]),
    ("04.topk_routing", route_naive_softmax, ["large logits", "subtract the max logit", "NaN/inf"]),
    ("04.topk_routing", route_topk_of_logits_then_softmax, ["softmax over ALL experts"]),
    ("05.layer_layout", layout_attention_first, ["ends each group with attention"]),
    ("06.row_sums_tiled", row_sums_no_tail, ["last partial tile is missing", "mask=offs < N"]),
    ("07.loss_labels", labels_shift_only, ["trained across document boundaries"]),
    ("07.loss_labels", labels_keep_padding, ["padding (doc_id -1) must have label -100"]),
    ("08.invert_condition", invert_if_only, ["missing mutant", "while"]),
    ("09.reward", reward_only_fail_to_pass, ["a PASS_TO_PASS test broken", "expected 0.0"]),
    ("09.reward", reward_ignores_missing, ["missing from the report", "a missing test counts as failed"]),
    ("11.exploit_test", exploit_single_payload, ["double quotes", "injectable, but your test passed", "each quote"]),
    ("11.exploit_test", exploit_any_error_is_an_attack, ["refuses quotes", "safe, but your test failed"]),
    ("11.exploit_test", exploit_functional_only, ["the task's insecure functional fix", "injectable"]),
    ("11.exploit_test", exploit_uncaught_error, ["raised OperationalError", "catch what visits_of raises"]),
]


@pytest.mark.parametrize("name, fn, hints", WRONG, ids=[f"{n}-{f.__name__}" for n, f, _ in WRONG])
def test_a_plausible_wrong_answer_fails_with_a_helpful_message(name, fn, hints, capsys):
    res = check(name, fn)
    assert not res.passed
    for h in hints:
        assert h in res.message, f"hint {h!r} not in: {res.message}"
    assert capsys.readouterr().out.startswith(f"✗ {name}: ")


def test_crashes_and_unwritten_exercises_say_so():
    def crashes(*a):
        return a[0][10**9]

    res = check("05.layer_layout", crashes)
    assert not res.passed and "raised" in res.message and "case num_layers=4" in res.message

    def todo(*a):
        raise NotImplementedError

    res = check("02.delta_rule_step", todo)
    assert not res.passed and "not implemented yet" in res.message and "delta_rule_step(S[B,H,K,V]" in res.message
    with pytest.raises(KeyError, match="no exercise"):
        check("99.nope", todo)


def test_grpo_advantage_checker_against_the_rl_library():
    pytest.importorskip("minicoder.rl.grpo", reason="the RL stage (issue 14) is not merged yet")

    def adv(rewards, std_norm):
        r = np.asarray(rewards, dtype=float)
        a = r - r.mean()
        if std_norm and len(r) > 1:
            a = a / (r.std(ddof=1) + 1e-6)
        return a.tolist() if len(r) > 1 else [0.0] * len(r)

    assert check("10.grpo_advantage", adv).passed

    def population_std(rewards, std_norm):
        r = np.asarray(rewards, dtype=float)
        a = r - r.mean()
        return (a / (r.std() + 1e-6)).tolist() if std_norm else a.tolist()

    res = check("10.grpo_advantage", population_std)
    assert not res.passed and "sample standard deviation" in res.message


# --- make lab ----------------------------------------------------------------------------------------------

def test_strip_solutions_keeps_indentation_and_the_checker_call():
    src = ("def f(x):\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\n\n"
           'check("05.layer_layout", f);\n')
    out = strip_solutions(src, "05.layer_layout")
    assert out == ('def f(x):\n    raise NotImplementedError("exercise: 05.layer_layout")\n\n\n'
                   'check("05.layer_layout", f);\n')


def test_make_lab_writes_student_copies_without_solutions(tmp_path):
    import nbformat

    paths = write_lab(ROOT / "notebooks", tmp_path / "labs")
    assert {p.name for p in paths} == {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert "# BEGIN SOLUTION" not in text and "# END SOLUTION" not in text
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    nb = nbformat.read(tmp_path / "labs" / "05_hybrid_model.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if 'check("05.layer_layout"' in c.source)
    assert 'raise NotImplementedError("exercise: 05.layer_layout")' in cell
    ns: dict = {}
    exec(compile(cell.replace("check(", "_res = check("), "lab", "exec"), ns)  # the student's first run
    assert not ns["_res"].passed and "not implemented yet" in ns["_res"].message
    # the original notebooks are untouched
    assert "# BEGIN SOLUTION" in (ROOT / "notebooks" / "05_hybrid_model.py").read_text()
    assert re.search(r"labs/", (ROOT / ".gitignore").read_text())
