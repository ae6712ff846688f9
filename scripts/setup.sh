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

"$VENV/bin/python" -c "import torch, minicoder; print(f'[setup] ok: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), minicoder {minicoder.__version__}')"
echo "$want" > "$stamp"
