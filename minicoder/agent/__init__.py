"""The agent: how a coding model talks to its environment, shared by mid-training and RL.

  chat.py   the Qwen3-Coder chat template (ChatML + XML tool calls), its loss mask, the tool-call
            parser, and `AGENT_TOOLS`, the tool set of the scripted mid-training trajectories

Layer: above `model` and `sandbox`, below `train` and `tasks` (training imports the template from
here), so the RL stage and training read and write one format.
"""
