"""The agent's tools, run in the rollout's live sandbox session: view, str_replace, create, run_tests,
bash, submit (the minimum the open agent systems share: a viewer, exact-match editing, running tests or
a shell, and a way to say "done"; see ../shared/RL.md).

A tool call is answered with a `ToolResult`: its output becomes the observation (truncated to
`ToolConfig.max_output_chars`), and flags say whether the call was malformed (counted as invalid),
refused, or ended the rollout. Nothing a tool does can raise into the agent loop: a missing file or a
non-unique match is an error observation the agent can read and act on.

Tools work against any object with the session interface of `minicoder.sandbox.session`
(`exec(cmd, timeout)`, `read_file`, `write_file`, `list_files`, `diff`, `alive`): `SessionLike`.
The session only holds the task's visible files; the hidden tests are applied later, in a fresh
sandbox, by the evaluation stage.

Refused at the tool layer (on top of the sandbox having no network): a command that combines a
network tool (curl, wget, git clone/fetch/pull/push, pip install/download, ssh, ...) with a repository
address (a URL, ``git@host:owner/repo``, a known forge's host name), any edit of git remotes
(``git remote add/set-url``, ``git config remote.*`` / ``url.*.insteadOf``), and file edits inside
``.git/``: the reward hacks the Qwen3-Coder-Next report saw (fetching the upstream fix).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

ALL_TOOLS = ("view", "str_replace", "create", "run_tests", "bash", "submit")

SPECS: dict[str, dict[str, Any]] = {
    "view": {"name": "view", "description": "Show a file (or the lines start..end of it), or list a folder.",
             "parameters": {"type": "object", "properties": {
                 "path": {"type": "string", "description": "path relative to the repository root"},
                 "view_range": {"type": "array", "description": "optional [start, end] line numbers (1-based)"}},
                 "required": ["path"]}},
    "str_replace": {"name": "str_replace", "description": "Replace the one exact occurrence of old_str in a file.",
                    "parameters": {"type": "object", "properties": {
                        "path": {"type": "string", "description": "file to edit"},
                        "old_str": {"type": "string", "description": "exact text to replace (must occur once)"},
                        "new_str": {"type": "string", "description": "replacement text"}},
                        "required": ["path", "old_str", "new_str"]}},
    "create": {"name": "create", "description": "Create a new file.",
               "parameters": {"type": "object", "properties": {
                   "path": {"type": "string", "description": "new file's path"},
                   "file_text": {"type": "string", "description": "its content"}},
                   "required": ["path", "file_text"]}},
    "run_tests": {"name": "run_tests", "description": "Run the visible tests (or the given test ids).",
                  "parameters": {"type": "object", "properties": {
                      "tests": {"type": "string", "description": "optional pytest ids, space-separated"}},
                      "required": []}},
    "bash": {"name": "bash", "description": "Run a shell command in the repository.",
             "parameters": {"type": "object", "properties": {
                 "command": {"type": "string", "description": "the command"}}, "required": ["command"]}},
    "submit": {"name": "submit", "description": "Finish: the repository as it is now is your answer.",
               "parameters": {"type": "object", "properties": {}, "required": []}},
}


@runtime_checkable
class SessionLike(Protocol):
    """What a tool needs from a live environment (`minicoder.sandbox.session.Session` has it)."""

    @property
    def alive(self) -> bool: ...

    def exec(self, cmd: str, timeout: float | None = None) -> Any: ...  # -> sandbox.base.ExecResult

    def read_file(self, path: str) -> str: ...

    def write_file(self, path: str, text: str) -> None: ...

    def list_files(self) -> list[str]: ...

    def diff(self) -> str: ...


@dataclass(frozen=True)
class ToolConfig:
    """Which tools an agent gets and how they answer."""

    tools: tuple[str, ...] = ("view", "str_replace", "create", "run_tests", "submit")  # bash off (toy tasks)
    max_output_chars: int = 2000  # observations are cut to this (tests: the tail; files: the head)
    exec_timeout_s: float = 30.0  # per run_tests / bash command
    line_numbers: bool = False  # view prints "   N\t" before each line
    test_cmd: str = "python -m pytest -q -p no:cacheprovider --tb=short"  # for named test ids
    optional_params: bool = True  # describe the optional parameters (view_range, tests) in the prompt

    def __post_init__(self) -> None:
        bad = [t for t in self.tools if t not in ALL_TOOLS]
        if bad:
            raise ValueError(f"unknown tools {bad}; known: {ALL_TOOLS}")
        if "submit" not in self.tools:
            raise ValueError("the tool set needs 'submit' (the only way a rollout finishes)")

    @classmethod
    def toy(cls, **kw: Any) -> ToolConfig:
        """The toy-family tool set: view, str_replace, run_tests, submit (no shell; no create, which a
        one-line fix never needs). The prompt leaves out the optional parameters (a line range, test
        ids) that a one-file task never needs: the system turn is every rollout's longest part and its
        tokens cost on a CPU. The tools still accept them."""
        return cls(**{"tools": ("view", "str_replace", "run_tests", "submit"), "optional_params": False, **kw})

    @classmethod
    def swe(cls, **kw: Any) -> ToolConfig:
        """The SWE-task tool set: bash on, numbered views."""
        return cls(**{"tools": ALL_TOOLS, "line_numbers": True, "max_output_chars": 4000, **kw})

    def specs(self) -> list[dict[str, Any]]:
        """The tools as the chat template lists them (JSON-schema function specs)."""
        if self.optional_params:
            return [SPECS[t] for t in self.tools]
        out = []
        for t in self.tools:
            spec, params = SPECS[t], SPECS[t]["parameters"]
            props = {k: v for k, v in params["properties"].items() if k in params["required"]}
            out.append({**spec, "parameters": {**params, "properties": props}})
        return out

    def replace(self, **kw: Any) -> ToolConfig:
        return replace(self, **kw)


@dataclass
class ToolResult:
    output: str
    error: bool = False  # an error observation (the call ran, or was refused, and failed)
    invalid: bool = False  # the call was malformed: unknown tool, missing / mistyped parameter
    refused: bool = False
    submitted: bool = False
    env_error: bool = False  # the environment failed (session dead, hung): not the agent's fault
    info: dict[str, Any] = field(default_factory=dict)


# --- refusals --------------------------------------------------------------------------------------

_NET = re.compile(r"\b(curl|wget|aria2c|git\s+(clone|fetch|pull|push|ls-remote|submodule|archive\s+--remote)|"
                  r"pip3?\s+(install|download)|python[\d.]*\s+-m\s+pip|uv\s+pip|npm|yarn|ssh|scp|sftp|rsync|nc|"
                  r"ncat|netcat|telnet|ftp|svn|hg|urllib|requests|http\.client|socket|urlopen)\b", re.I)
_ADDR = re.compile(r"(\b[a-z][a-z0-9+.-]*://|\bgit@[\w.-]+:|\b(github|gitlab|bitbucket|codeberg|sourceforge|"
                   r"huggingface|pypi)\.(com|org|co|io)\b|\b[\w.-]+\.git\b|\bgh\s+repo\b)", re.I)
_REMOTE_EDIT = re.compile(r"\bgit\b.*\b(remote\s+(add|set-url|rename|set-head|set-branches)|config\b.*"
                          r"(remote\.|url\..*insteadof|\.url\b))", re.I | re.S)


def refusal(name: str, args: dict[str, Any]) -> str | None:
    """Why a call is refused, or None. Applies to bash commands and to file edits."""
    if name == "bash":
        cmd = str(args.get("command", ""))
        if _REMOTE_EDIT.search(cmd):
            return "editing git remotes is not allowed"
        if _NET.search(cmd) and _ADDR.search(cmd):
            return "commands that reach a repository over the network are not allowed"
    if name in ("str_replace", "create", "view") and isinstance(args.get("path"), str):
        parts = args["path"].replace("\\", "/").split("/")
        if ".git" in parts and name != "view":
            return "editing files inside .git/ is not allowed"
    return None


# --- the tool box ------------------------------------------------------------------------------------

def _cut(text: str, n: int, keep: str) -> str:
    if len(text) <= n:
        return text
    if keep == "tail":
        return f"[... {len(text) - n} characters cut ...]\n" + text[-n:]
    return text[:n] + f"\n[... {len(text) - n} characters cut ...]"


def _bad_path(path: Any) -> str | None:
    if not isinstance(path, str) or not path.strip():
        return "path must be a non-empty string"
    p = path.strip()
    if p.startswith("/") or ".." in p.replace("\\", "/").split("/"):
        return f"path {p!r} must be relative to the repository root, without '..'"
    return None


class ToolBox:
    """The tools of one rollout, bound to its session and task."""

    def __init__(self, session: SessionLike, task, cfg: ToolConfig | None = None) -> None:
        self.session, self.task = session, task
        self.cfg = cfg or ToolConfig()
        meta = getattr(task, "metadata", {}) or {}
        self.visible_cmd = meta.get("visible_test_cmd") or self.cfg.test_cmd

    def call(self, name: str, args: dict[str, Any]) -> ToolResult:
        if name not in self.cfg.tools:
            return ToolResult(f"error: unknown tool {name!r}; the tools are {', '.join(self.cfg.tools)}",
                              error=True, invalid=True)
        why = refusal(name, args)
        if why:
            return ToolResult(f"error: refused: {why}.", error=True, refused=True)
        if not self.session.alive:
            return ToolResult("error: the environment is gone", error=True, env_error=True)
        try:
            return getattr(self, f"_{name}")(**args)
        except TypeError as e:  # wrong / missing parameters that the parser did not catch
            return ToolResult(f"error: {name}: {e}", error=True, invalid=True)
        except Exception as e:  # the session failed underneath: an environment error, not the agent's
            if not self.session.alive:
                return ToolResult(f"error: the environment failed ({type(e).__name__})", error=True, env_error=True)
            return ToolResult(f"error: {name}: {type(e).__name__}: {e}", error=True)

    # --- the tools --------------------------------------------------------------------------------
    def _read(self, path: str) -> str | None:
        try:
            return self.session.read_file(path)
        except (FileNotFoundError, IsADirectoryError, KeyError, OSError, ValueError):
            return None
        except Exception as e:  # e.g. SessionError("no such file"): a missing file, if the session is alive
            if self.session.alive and ("no such" in str(e).lower() or "not found" in str(e).lower()):
                return None
            raise

    def _view(self, path: str, view_range: Any = None) -> ToolResult:
        bad = _bad_path(path)
        if bad:
            return ToolResult(f"error: {bad}", error=True)
        path = path.strip()
        text = self._read(path)
        if text is None:
            prefix = "" if path in (".", "./") else path.rstrip("/") + "/"
            inside = sorted(f for f in self.session.list_files() if f.startswith(prefix))
            if inside:
                return ToolResult(_cut("\n".join(f[len(prefix):] for f in inside), self.cfg.max_output_chars, "head"))
            return ToolResult(f"error: {path}: no such file or folder", error=True)
        lines = text.splitlines()
        start, end = 1, len(lines)
        if view_range is not None:
            if isinstance(view_range, str):
                try:
                    view_range = json.loads(view_range)
                except json.JSONDecodeError:
                    view_range = None
            if not (isinstance(view_range, list) and len(view_range) == 2 and all(isinstance(x, int) for x in view_range)):
                return ToolResult("error: view_range must be [start, end] (two line numbers)", error=True, invalid=True)
            start, end = max(1, view_range[0]), (len(lines) if view_range[1] == -1 else min(len(lines), view_range[1]))
            if start > end:
                return ToolResult(f"error: view_range {view_range} is empty ({path} has {len(lines)} lines)", error=True)
        shown = lines[start - 1:end]
        if self.cfg.line_numbers:
            shown = [f"{i:>5}\t{ln}" for i, ln in enumerate(shown, start)]
        return ToolResult(_cut("\n".join(shown), self.cfg.max_output_chars, "head"))

    def _str_replace(self, path: str, old_str: str, new_str: str) -> ToolResult:
        bad = _bad_path(path)
        if bad:
            return ToolResult(f"error: {bad}", error=True)
        path = path.strip()
        text = self._read(path)
        if text is None:
            return ToolResult(f"error: {path}: no such file", error=True)
        if old_str == "":
            return ToolResult("error: old_str is empty", error=True)
        n = text.count(old_str)
        if n == 0:
            return ToolResult(f"error: old_str does not occur in {path}", error=True)
        if n > 1:
            return ToolResult(f"error: old_str occurs {n} times in {path}; include more lines to make it unique",
                              error=True)
        self.session.write_file(path, text.replace(old_str, new_str, 1))
        return ToolResult(f"Edited {path}.")

    def _create(self, path: str, file_text: str) -> ToolResult:
        bad = _bad_path(path)
        if bad:
            return ToolResult(f"error: {bad}", error=True)
        path = path.strip()
        if self._read(path) is not None:
            return ToolResult(f"error: {path} already exists; edit it with str_replace", error=True)
        self.session.write_file(path, file_text)
        return ToolResult(f"Created {path}.")

    def _exec(self, cmd: str) -> tuple[str, Any]:
        r = self.session.exec(cmd, timeout=self.cfg.exec_timeout_s)
        out = (r.stdout or "") + (("\n" if r.stdout and r.stderr else "") + (r.stderr or ""))
        out = _cut(out.rstrip("\n"), self.cfg.max_output_chars, "tail")
        if r.timed_out:
            out = (out + "\n" if out else "") + f"error: timed out after {self.cfg.exec_timeout_s:.0f}s"
        return out, r

    def _run_tests(self, tests: str | None = None) -> ToolResult:
        if tests and str(tests).strip():
            ids = shlex.split(str(tests)) if not isinstance(tests, list) else [str(t) for t in tests]
            cmd = f"{self.cfg.test_cmd} {shlex.join(ids)}"
        else:
            cmd = self.visible_cmd
        out, r = self._exec(cmd)
        return ToolResult(out or f"(no output, exit code {r.exit_code})", info={"exit_code": r.exit_code,
                                                                              "timed_out": r.timed_out})

    def _bash(self, command: str) -> ToolResult:
        out, r = self._exec(command)
        return ToolResult((out + "\n" if out else "") + f"[exit code {r.exit_code}]",
                          info={"exit_code": r.exit_code, "timed_out": r.timed_out})

    def _submit(self) -> ToolResult:
        return ToolResult("Submitted.", submitted=True)
