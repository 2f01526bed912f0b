# Sourced by up.sh and down.sh: where the local workers live and how to start and stop them.
#
# Each worker is a background process with, under $WORKERS_DIR (default
# .mulambda/workers/):
#   <name>.pid   its pid
#   <name>.cmd   a piece of its command line, checked before the pid is trusted or
#                signalled (a recycled pid belongs to someone else)
#   <name>.log   its output (the previous run's in <name>.log.prev)
# shellcheck shell=bash disable=SC2034 # the variables are used by the sourcing scripts
# shellcheck source=deploy/local/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

SCRIPT_DIR="$REPO/deploy/local"
INFRA="$SCRIPT_DIR/infra.sh"

STATE_DIR=${MULAMBDA_HOME:-$REPO/.mulambda}
case $STATE_DIR in /*) ;; *) STATE_DIR=$PWD/$STATE_DIR ;; esac
# infra.sh resolves MULAMBDA_HOME the same way; hand it the absolute path.
export MULAMBDA_HOME=$STATE_DIR
WORKERS_DIR=$STATE_DIR/workers
MULAMBDA_BIN=$VENV/bin/mulambda

EXECUTOR_PORT=${MULAMBDA_EXECUTOR_PORT:-8501}
SELECTOR_METRICS_PORT=${MULAMBDA_SELECTOR_METRICS_PORT:-9180}
ROUTER_METRICS_PORT=${MULAMBDA_ROUTER_METRICS_PORT:-9181}
LAUNCHER_METRICS_PORT=${MULAMBDA_LAUNCHER_METRICS_PORT:-9182}
PROBE_PORT=${MULAMBDA_PROBE_PORT:-0}
read -r -a SYNTHETIC_MODELS <<<"${MULAMBDA_SYNTHETIC_MODELS:-FastBad MidOK SlowGood}"
TIME_SCALE=${MULAMBDA_TIME_SCALE:-0.2}
DEMO_CLIENT_ID=${MULAMBDA_DEMO_CLIENT_ID:-demo-client}
# The selector's policy for requests that name none; adaptive is load-aware (settings.py).
DEFAULT_POLICY=${MULAMBDA_SELECTOR_DEFAULT_POLICY:-adaptive}
UP_TIMEOUT=${MULAMBDA_UP_TIMEOUT:-60}
# The real model: a scikit-learn wine classifier served by MLServer (OIP v2). 1 (default):
# served, MLServer installed first when missing (infra.sh install mlserver, cached);
# auto: served only when MLServer is already installed; 0: never.
WITH_MLSERVER=${MULAMBDA_WITH_MLSERVER:-1}
MLSERVER_PORT=${MULAMBDA_MLSERVER_PORT:-8502}
MLSERVER_GRPC_PORT=${MULAMBDA_MLSERVER_GRPC_PORT:-8503}
MLSERVER_METRICS_PORT=${MULAMBDA_MLSERVER_METRICS_PORT:-8504}
REAL_MODEL=wine
REAL_MODEL_VERSION=1
REAL_MODEL_TRAITS=(classification wine-13 probs-3)
REAL_DIR=$STATE_DIR/real
# With MULAMBDA_WITH_TENSORFLOW=1 the wine classifier also runs as a Keras SavedModel on
# `mulambda executor serve` (TF Serving REST), under the same traits.
WITH_TENSORFLOW=${MULAMBDA_WITH_TENSORFLOW:-0}
TF_MODEL=wine-keras
TF_EXECUTOR_PORT=${MULAMBDA_TF_EXECUTOR_PORT:-8505}
WORKER_STOP_TIMEOUT=25 # the runner's grace (10 s) + its stop bound (5 s), with room

die() {
  log "ERROR: $*"
  exit 1
}

require_port() { # name value (0 allowed: any free port)
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 > 65535)); then
    die "$1 must be a TCP port (0-65535), got '$2'"
  fi
}

check_config() {
  local var
  for var in EXECUTOR_PORT SELECTOR_METRICS_PORT ROUTER_METRICS_PORT LAUNCHER_METRICS_PORT PROBE_PORT \
    MLSERVER_PORT MLSERVER_GRPC_PORT MLSERVER_METRICS_PORT TF_EXECUTOR_PORT; do
    require_port "MULAMBDA_$var" "${!var}"
  done
  case $WITH_MLSERVER in auto | 0 | 1) ;; *) die "MULAMBDA_WITH_MLSERVER must be auto, 0 or 1" ;; esac
  [[ $UP_TIMEOUT =~ ^[0-9]+$ ]] || die "MULAMBDA_UP_TIMEOUT must be a whole number of seconds"
  ((${#SYNTHETIC_MODELS[@]})) || die "MULAMBDA_SYNTHETIC_MODELS names no model"
}

executor_id() { printf 'local-%s' "$1"; }

# Serialise up.sh and down.sh on one MULAMBDA_HOME. Fd 7 must be closed for every
# child that outlives us (workers, infra.sh's daemons), or it would hold the lock.
lock_platform() {
  mkdir -p "$WORKERS_DIR"
  command -v flock >/dev/null 2>&1 || return 0
  exec 7>"$WORKERS_DIR/.lock"
  if ! flock -n 7; then
    log "waiting for another up.sh/down.sh on $STATE_DIR"
    flock -w 300 7 || die "gave up waiting for $WORKERS_DIR/.lock"
  fi
}

port_open() { # port: something accepts connections on 127.0.0.1:port
  # shellcheck disable=SC2016 # expanded by the inner bash, on purpose.
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Prints the pid and succeeds if <name>.pid names a live process whose command line
# holds <name>.cmd.
worker_pid() {
  local name=$1 pid match stat
  [[ -f $WORKERS_DIR/$name.pid && -f $WORKERS_DIR/$name.cmd ]] || return 1
  pid=$(<"$WORKERS_DIR/$name.pid")
  match=$(<"$WORKERS_DIR/$name.cmd")
  [[ $pid =~ ^[0-9]+$ && -n $match ]] || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ $stat != Z* ]] || return 1
  # /proc rather than ps: ps may cut long command lines.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match" || return 1
  echo "$pid"
}

forget_worker() { rm -f "$WORKERS_DIR/$1.pid" "$WORKERS_DIR/$1.cmd"; }

# All worker names with a pid file, companions and the probe first (they deregister).
worker_names() {
  local file name first=() rest=()
  for file in "$WORKERS_DIR"/*.pid; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .pid)
    case $name in
      companion-* | probe) first+=("$name") ;;
      *) rest+=("$name") ;;
    esac
  done
  printf '%s\n' "${first[@]}" "${rest[@]}" | sed '/^$/d'
}

# start_worker NAME MATCH [VAR=VALUE ...] -- COMMAND ARGS...
# Starts COMMAND detached unless NAME already runs. Succeeds with STARTED_NOW=1 when
# it launched something.
start_worker() {
  local name=$1 match=$2 pid log_file
  shift 2
  local env_args=()
  while [[ $# -gt 0 && $1 != -- ]]; do
    env_args+=("$1")
    shift
  done
  shift # --
  STARTED_NOW=0
  if pid=$(worker_pid "$name"); then
    log "$name: already running (pid $pid)"
    return 0
  fi
  forget_worker "$name"
  log_file=$WORKERS_DIR/$name.log
  if [[ -f $log_file ]]; then mv -f "$log_file" "$log_file.prev"; fi
  # setsid: own session, so workers outlive this shell and ignore its Ctrl-C. The
  # worker writes its own pid before exec'ing: `$!` would be setsid's, which forks
  # and exits when it leads a process group (under a job-controlling shell).
  rm -f "$WORKERS_DIR/$name.pid"
  # shellcheck disable=SC2016 # $$ and "$@" belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$WORKERS_DIR/$name.pid" \
    env "${env_args[@]}" "$@" </dev/null >"$log_file" 2>&1 7>&- &
  disown "$!" 2>/dev/null || true
  local waited=0
  until [[ -s $WORKERS_DIR/$name.pid ]]; do
    ((waited++ < 100)) || { log "ERROR: $name: no pid after 10s"; return 1; }
    sleep 0.1
  done
  pid=$(<"$WORKERS_DIR/$name.pid")
  printf '%s\n' "$match" >"$WORKERS_DIR/$name.cmd"
  STARTED_NOW=1
  log "$name: started (pid $pid, log $log_file)"
}

show_worker_log() {
  local file=$WORKERS_DIR/$1.log
  if [[ -s $file ]]; then
    log "last 15 lines of $file:"
    tail -n 15 "$file" | sed 's/^/    /' >&2
  fi
}

# TERM every named worker at once, then wait for all (KILL after the timeout).
stop_workers() {
  local name pid waiting=() deadline
  for name in "$@"; do
    if pid=$(worker_pid "$name"); then
      log "$name: stopping pid $pid"
      kill -TERM "$pid" 2>/dev/null || true
      waiting+=("$name")
    else
      [[ -f $WORKERS_DIR/$name.pid ]] && log "$name: not running (stale pid file removed)"
      forget_worker "$name"
    fi
  done
  deadline=$((SECONDS + WORKER_STOP_TIMEOUT))
  for name in "${waiting[@]}"; do
    while worker_pid "$name" >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if pid=$(worker_pid "$name"); then
      log "$name: still alive after ${WORKER_STOP_TIMEOUT}s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    forget_worker "$name"
  done
  ((${#waiting[@]} == 0)) || log "stopped ${waiting[*]}"
}
