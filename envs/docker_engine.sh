#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; start one if none does.
#
# Idempotent: when `docker info` answers, it does nothing. Otherwise, on Linux as root, it installs
# Debian's `docker.io` when `dockerd` is missing (apt-get update only when the install needs it),
# removes pid/socket files that a killed daemon left behind (a stale /var/run/docker.pid blocks the
# next start when its pid has been reused), starts `dockerd` detached (setsid + nohup, log in
# $MINICODER_DOCKERD_LOG) and waits until `docker info` answers.
#
# Daemon options: the first of these that starts wins, so a machine where something does not work
# still gets an engine (containers for evaluation run with network "none" in every case):
#   1. the daemon's defaults (overlay2 storage, bridge network with iptables NAT)
#   2. --iptables=false --bridge=none            (no bridge networking: only "none" and "host")
#   3. the same plus --storage-driver=vfs        (no overlayfs: slower, uses more disk, works anywhere)
# MINICODER_DOCKERD_ARGS="..." replaces that list with one set of options.
#
# Not Linux, or not root: prints what to do and exits 1.
# Knobs: MINICODER_DOCKERD_LOG (default /var/log/minicoder-dockerd.log),
#        MINICODER_DOCKERD_TIMEOUT (seconds to wait for an answer per attempt, default 60).
set -euo pipefail

LOG=${MINICODER_DOCKERD_LOG:-/var/log/minicoder-dockerd.log}
TIMEOUT=${MINICODER_DOCKERD_TIMEOUT:-60}
PIDFILE=/var/run/docker.pid
SOCK=/var/run/docker.sock
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid

say() { echo "[docker] $*"; }
die() { echo "[docker] error: $*" >&2; exit 1; }

engine_answers() {
  command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1
}

describe_engine() {
  docker info --format 'server {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}' 2>/dev/null \
    || echo "answers"
}

if engine_answers; then
  say "engine already answers ($(describe_engine)); nothing to do"
  exit 0
fi

if [ "$(uname -s)" != "Linux" ]; then
  die "no Docker engine answers. On $(uname -s), start Docker Desktop (or colima, OrbStack, Podman with
  its Docker socket) and run this again; \`docker info\` must work."
fi
if [ "$(id -u)" != 0 ]; then
  die "no Docker engine answers, and starting one needs root. Either start your engine
  (\`sudo systemctl start docker\`) and make sure your user may use it (\`sudo usermod -aG docker \$USER\`,
  then log in again), or run \`sudo bash envs/docker_engine.sh\`."
fi
if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix://$SOCK" ]; then
  die "DOCKER_HOST=$DOCKER_HOST does not answer. Start that engine, or unset DOCKER_HOST to let this
  script start a local one on $SOCK."
fi

# -- install -------------------------------------------------------------------------------------
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "dockerd is missing and this is not a Debian-like system:
  install Docker Engine (https://docs.docker.com/engine/install/) and run this again."
  local log; log=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  # Try with the package lists we have; refresh them only when that fails.
  if ! apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1; then
    say "refreshing the package lists (apt-get update)"
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; } >"$log" 2>&1; then
      tail -n 30 "$log" >&2; rm -f "$log"; die "could not install: $*"
    fi
  fi
  rm -f "$log"
}

if ! command -v dockerd >/dev/null 2>&1; then
  say "dockerd not found: installing Debian's docker.io"
  t0=$SECONDS
  apt_install docker.io
  say "installed docker.io in $((SECONDS - t0))s"
fi
command -v docker >/dev/null 2>&1 || apt_install docker.io   # the client alone can be missing

# -- a daemon that is already running (maybe still starting) -------------------------------------
# The pid in a pid file counts as alive only when that process is what the file says it is; a pid
# from a killed daemon may since have been given to an unrelated process.
live_pid() {  # live_pid FILE NAME -> prints the pid when FILE names a running NAME process
  local file=$1 name=$2 pid
  [ -f "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ] && echo "$pid"
}

wait_for_engine() {  # wait_for_engine PID -> 0 when the engine answers, 1 when PID died, 2 on time-out
  local pid=$1 deadline=$((SECONDS + TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    engine_answers && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 2
}

if pid=$(live_pid "$PIDFILE" dockerd); then
  say "dockerd (pid $pid) is running but does not answer yet; waiting up to ${TIMEOUT}s"
  if wait_for_engine "$pid"; then say "engine answers ($(describe_engine))"; exit 0; fi
  die "dockerd (pid $pid) runs but does not answer on $SOCK. Look at $LOG, stop it
  (\`kill $pid\`) and run this again."
fi

# -- stale files from a killed daemon -------------------------------------------------------------
for f in "$PIDFILE" "$SOCK"; do
  if [ -e "$f" ]; then say "removing stale $f (no dockerd owns it)"; rm -f "$f"; fi
done
if [ -f "$CONTAINERD_PIDFILE" ] && ! live_pid "$CONTAINERD_PIDFILE" containerd >/dev/null; then
  say "removing stale $CONTAINERD_PIDFILE"
  rm -f "$CONTAINERD_PIDFILE"
fi

# -- start ------------------------------------------------------------------------------------------
if [ -n "${MINICODER_DOCKERD_ARGS:-}" ]; then
  attempts=("$MINICODER_DOCKERD_ARGS")
else
  attempts=("" "--iptables=false --bridge=none" "--iptables=false --bridge=none --storage-driver=vfs")
fi

mkdir -p "$(dirname "$LOG")"
[ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
t0=$SECONDS
for args in "${attempts[@]}"; do
  say "starting dockerd ${args:-(default options)}; log: $LOG"
  echo "=== $(date -u +%FT%TZ) dockerd $args" >>"$LOG"
  # setsid + nohup: the daemon outlives this script and the shell (or make) that ran it.
  # shellcheck disable=SC2086  # $args is a list of options
  setsid nohup dockerd $args >>"$LOG" 2>&1 </dev/null &
  pid=$!
  set +e; wait_for_engine "$pid"; rc=$?; set -e
  if [ $rc = 0 ]; then
    say "engine answers after $((SECONDS - t0))s ($(describe_engine))"
    exit 0
  fi
  if [ $rc = 2 ]; then
    echo "--- last lines of $LOG:" >&2; tail -n 25 "$LOG" >&2
    kill "$pid" 2>/dev/null || true
    die "dockerd (pid $pid) did not answer within ${TIMEOUT}s (MINICODER_DOCKERD_TIMEOUT raises the wait)."
  fi
  say "dockerd ${args:-(default options)} exited: $(grep -Ei 'level=(fatal|error)|failed' "$LOG" | tail -n 1 | cut -c1-300)"
  rm -f "$PIDFILE"
done
echo "--- last lines of $LOG:" >&2; tail -n 25 "$LOG" >&2
die "dockerd would not start with any of the option sets tried (see $LOG)."
