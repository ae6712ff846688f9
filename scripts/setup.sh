#!/usr/bin/env bash
# One-time (and idempotent) set-up of minicoder on a fresh machine: creates .venv, installs the
# right torch build (CPU build without a GPU, CUDA build with one), the package with its dev extras,
# and the system tools the sandboxes use (bubblewrap). Called by `make setup`, so by `make demo`
# and `make test`; re-runs only when pyproject.toml changes.
#
# Knobs (environment variables):
#   PYTHON            interpreter to build the venv from (default: python3.11, else python3)
#   VENV              venv folder (default: .venv)
#   TORCH_SPEC        torch requirement (default: torch==2.13.0)
#   TORCH_INDEX_URL   extra index for torch, e.g. https://download.pytorch.org/whl/cpu on a
#                     machine whose PyPI serves only CUDA builds and that has no GPU
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.minicoder-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

# The browser tests (tests/test_browser.py) drive Debian's chromium with Playwright (Playwright's own
# browser download needs its CDN) and build one course page, which fetches the ipywidgets HTML
# manager with npm once. CI must run them, so in CI (CI=true) or with MINICODER_BROWSER=1 what is
# missing of chromium and npm is installed where we may (Debian, root); elsewhere those tests skip
# without chromium. Checked before the stamp so that a machine set up earlier still gets them.
if [ "${CI:-}" = true ] || [ "${MINICODER_BROWSER:-}" = 1 ]; then
  browser_pkgs=()
  command -v chromium >/dev/null 2>&1 || browser_pkgs+=(chromium)
  command -v npm >/dev/null 2>&1 || browser_pkgs+=(npm)
  if [ ${#browser_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "[setup] installing ${browser_pkgs[*]} (the browser tests)"
      export DEBIAN_FRONTEND=noninteractive
      (apt-get install -y -qq --no-install-recommends "${browser_pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${browser_pkgs[@]}" >/dev/null; }) \
        || echo "[setup] warning: could not install ${browser_pkgs[*]}; the browser tests will fail in CI"
    else
      echo "[setup] note: missing ${browser_pkgs[*]} (apt-get install ${browser_pkgs[*]}) for the browser tests"
    fi
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "[setup] python: $PYTHON ($("$PYTHON" --version 2>&1))"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# Run a command quietly; print its whole log only when it fails.
quiet() {
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then cat "$log"; rm -f "$log"; echo "[setup] failed: $*" >&2; exit 1; fi
  rm -f "$log"
}
quiet "${PIP[@]}" install -q --upgrade pip setuptools wheel

# torch: the build must match the machine. Without a GPU we want the CPU build (on this project's
# machines `torch==2.13.0` is served as the CPU build from local disk); with one, the CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  extra=()
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing the CUDA build of torch ($TORCH_SPEC)"
  else
    echo "[setup] no GPU: installing the CPU build of torch ($TORCH_SPEC)"
    [ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
  fi
  quiet "${PIP[@]}" install -q "${extra[@]}" "$TORCH_SPEC"
fi

echo "[setup] installing minicoder and its dev dependencies"
quiet "${PIP[@]}" install -q -e ".[dev,scale]"  # scale: ray, for the RL pipeline's Ray executor

# The embedded sandbox backend needs bubblewrap; install it where we may (Debian, root).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing bubblewrap (the local sandbox backend)"
    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap >/dev/null; }) \
      || echo "[setup] warning: could not install bubblewrap; the local sandbox backend will be unavailable"
  else
    echo "[setup] note: bubblewrap (bwrap) not found; install it for the local sandbox backend"
  fi
fi

# The JavaScript, Go and Rust graders' local backend runs the host's toolchains (the sandbox sees the
# host's /usr read-only): Debian's nodejs + node-tape, mocha, jest, golang-go, cargo (+ rustc). Only what is missing;
# a toolchain installed elsewhere (e.g. ~/.cargo) is invisible to the sandbox, so /usr/bin is checked.
lang_pkgs=()
[ -x /usr/bin/node ] || lang_pkgs+=(nodejs)
[ -f /usr/share/nodejs/tape/package.json ] || lang_pkgs+=(node-tape)
[ -f /usr/share/nodejs/mocha/package.json ] || lang_pkgs+=(mocha)
[ -f /usr/share/nodejs/jest/package.json ] || lang_pkgs+=(jest)
[ -x /usr/bin/go ] || lang_pkgs+=(golang-go)
[ -x /usr/bin/cargo ] || lang_pkgs+=(cargo)
if [ ${#lang_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing the language toolchains from Debian: ${lang_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    sh envs/lang/standins.sh node-types-node  # jest's unshipped dependency (see that script)
    (apt-get install -y -qq --no-install-recommends "${lang_pkgs[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${lang_pkgs[@]}" >/dev/null; }) \
      || echo "[setup] warning: could not install ${lang_pkgs[*]}; JavaScript/Go/Rust tasks will not run locally"
  else
    echo "[setup] note: missing ${lang_pkgs[*]} (Debian packages) for JavaScript/Go/Rust tasks on the local backend"
  fi
fi

"$VENV/bin/python" -c "import torch, minicoder; print(f'[setup] ok: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), minicoder {minicoder.__version__}')"
echo "$want" > "$stamp"
