"""The demo report's held-out figure: before/after bars for every number the eval stage measured."""

from __future__ import annotations

from minicoder.demo.report import fig_pass_at_1


def test_pass_at_1_figure_groups_sampled_greedy_and_pass_at_k_before_and_after():
    ev = {"n_tasks": 24, "pass_at_1": {"before": 0.036, "after": 0.099},
          "pass_at_1_greedy": {"before": 0.208, "after": 0.208}, "pass_at_k": {"k": 8, "before": 0.208, "after": 0.25}}
    fig = fig_pass_at_1(ev)
    before, after = fig.data
    assert (before.name, after.name) == ("before RL", "after RL") and fig.layout.barmode == "group"
    assert list(before.x) == ["pass@1 (sampled)", "pass@1 (greedy)", "pass@8"] == list(after.x)
    assert list(before.y) == [0.036, 0.208, 0.208] and list(after.y) == [0.099, 0.208, 0.25]
    assert "24 tasks" in fig.layout.title.text
    only = fig_pass_at_1({"pass_at_1": {"before": 0.1, "after": 0.3}})  # an eval with sampled pass@1 only
    assert [list(t.y) for t in only.data] == [[0.1], [0.3]] and list(only.data[0].x) == ["pass@1 (sampled)"]
    assert fig_pass_at_1({}) is None
