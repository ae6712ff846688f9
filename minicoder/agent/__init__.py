"""The agent: how a coding model talks to its environment, shared by mid-training and RL.

  chat.py      the Qwen3-Coder chat template (ChatML + XML tool calls), its loss mask, the tool-call
               parser, and `AGENT_TOOLS`, the tool set of the scripted mid-training trajectories
  tokens.py    conversations as token ids: template pieces with special tokens, content as plain text
  tools.py     view / str_replace / create / run_tests / bash / submit over a live session; refusals
  loop.py      the batched agent loop: limits, end reasons, invalid calls, token-in/token-out trajectories
  engine.py    multi-turn batched generation with per-rollout mixed caches (no context re-reads)
  policies.py  local model, OpenAI-compatible endpoint, scripted
  evaluate.py  rollouts graded with the hidden tests: pass@1 greedy/sampled, pass@k (eval-agent)
  cli.py       `minicoder eval-agent`

Layer: above `model` and `sandbox`, below `train` and `tasks` (training imports the template from
here), so the RL stage and training read and write one format.
"""
