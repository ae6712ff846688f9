"""Agentic RL: GRPO on rollouts in sandboxed environments, rewards from hidden tests.

  grpo.py          advantages, the clipped token-level loss, one update step (simplifications listed)
  pipeline.py      rollout -> evaluation -> post-processing, local executor; staleness, resume
  ray_executor.py  rollout and evaluation workers as Ray actors
  toy_tasks.py     the procedural toy task family (one injected bug; train / heldout splits)
  warmstart.py     scripted episodes recorded by the agent loop, mid-training on them
  report.py        the final model folder, plotly figures of a run
  cli.py           `minicoder rl`, `minicoder warmstart`

Layer: above `train`, `tasks` and `agent`.
"""
