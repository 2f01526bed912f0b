#!/usr/bin/env bash
# Run the MuLambda platform locally: Kafka, Redis and MinIO (infra.sh), the topic catalog,
# and as background processes one selector, one router, one executor serving synthetic
# models, a companion per model and a registered client probe (client id demo-client).
#
#   deploy/local/up.sh          # idempotent: running workers are left alone
#   deploy/local/down.sh        # stops them all, then the infrastructure
#
# Waits (MULAMBDA_UP_TIMEOUT, 60 s) until the selector is ready and the companions have
# registered, then prints how to send a request. Pids and logs of the workers live in
# $MULAMBDA_HOME/workers/ (default .mulambda/workers/). Optional environment:
#   MULAMBDA_WITH_TENSORFLOW=1          also install the tensorflow extra and serve the
#                                       wine classifier as a SavedModel (below)
#   MULAMBDA_TF_EXECUTOR_PORT=8505      the executor serving that SavedModel
#   MULAMBDA_EXECUTOR_PORT=8501         TF Serving REST port of the executor
#   MULAMBDA_SELECTOR_METRICS_PORT=9180 selector's /metrics /healthz /readyz
#   MULAMBDA_ROUTER_METRICS_PORT=9181   router's /metrics /healthz /readyz
#   MULAMBDA_LAUNCHER_METRICS_PORT=9182 launcher's (local backend: `executors launch
#                                       --publish` runs executors as processes here)
#   MULAMBDA_PROBE_PORT=0               the demo client's probe server (0: any free port)
#   MULAMBDA_SYNTHETIC_MODELS="FastBad MidOK SlowGood"   prototype profiles to serve
#   MULAMBDA_TIME_SCALE=0.2             multiplies the synthetic models' delays
#   MULAMBDA_DEMO_CLIENT_ID=demo-client
#   MULAMBDA_SELECTOR_DEFAULT_POLICY=adaptive  policy of requests naming none (load-aware;
#                                       weighted: the research prototype's, load-blind)
#   MULAMBDA_WITH_MLSERVER=1            the real model (below), MLServer installed first
#                                       when missing; auto: only if already installed; 0: never
#   MULAMBDA_MLSERVER_PORT=8502         its REST port (also _GRPC_PORT=8503, _METRICS_PORT=8504)
# The real model: a scikit-learn wine classifier trained by MLServer's Python
# (deploy/local/train_wine.py) into $MULAMBDA_HOME/real/, uploaded to MinIO
# (`mulambda models upload`), pulled back into MLServer's models folder, served by
# MLServer (Open Inference Protocol v2) and registered by a companion as executor
# local-wine with traits classification/wine-13/probs-3. Trained and uploaded once.
# With MULAMBDA_WITH_TENSORFLOW=1, also a Keras wine classifier (train_wine_keras.py)
# uploaded as SavedModel wine-keras, pulled and served by a second `mulambda executor
# serve` and registered as local-wine-keras (tfserving-rest) under the same traits.
# plus infra.sh's (MULAMBDA_HOME, MULAMBDA_KAFKA_PORT, ...; see deploy/local/README.md).
set -euo pipefail
# shellcheck source=deploy/local/platform.sh
source "$(dirname "${BASH_SOURCE[0]}")/platform.sh"

check_config
T0=$SECONDS
extras="dev"
if [[ $WITH_TENSORFLOW == 1 ]]; then extras="dev,tensorflow"; fi
ensure_venv "$extras"

# Each model registers its profile's confidences[0] as accuracy and its per-element delay
# (alpha, scaled like the executor scales it), which the weighted policy adds to the
# probed network latency. This also refuses unknown profile names before anything starts.
PROFILES=$("$VENV/bin/python" - "$TIME_SCALE" "${SYNTHETIC_MODELS[@]}" <<'EOF'
import sys

from mulambda.errors import MulambdaError
from mulambda.emulator.profiles import profile_by_name

try:
    scale = float(sys.argv[1])
    for name in sys.argv[2:]:
        profile = profile_by_name(name)
        print(name, profile.confidences[0], f"{profile.alpha * 1000 * scale:g}")
except ValueError:
    sys.exit(f"MULAMBDA_TIME_SCALE must be a number, not {sys.argv[1]!r}")
except MulambdaError as exc:
    sys.exit(f"MULAMBDA_SYNTHETIC_MODELS: {exc.reason}")
EOF
) || die "bad MULAMBDA_SYNTHETIC_MODELS or MULAMBDA_TIME_SCALE"

# Resolved before anything starts: MLServer lives in a venv of its own (infra.sh).
MLSERVER_BIN=""
if [[ $WITH_MLSERVER == 1 ]] && ! "$INFRA" installed mlserver 2>/dev/null; then
  "$INFRA" install mlserver || die "installing MLServer failed (MULAMBDA_WITH_MLSERVER=0 leaves the real model out)"
fi
if [[ $WITH_MLSERVER != 0 ]]; then
  if MLSERVER_BIN=$("$INFRA" mlserver-bin 2>/dev/null) && [[ -x $MLSERVER_BIN ]]; then
    for var in MLSERVER_PORT MLSERVER_GRPC_PORT MLSERVER_METRICS_PORT; do
      ((${!var} != 0)) || die "MULAMBDA_$var must name a port for MLServer, not 0"
    done
  elif [[ $WITH_MLSERVER == 1 ]]; then
    die "MLServer is not installed after infra.sh install mlserver"
  else
    MLSERVER_BIN=""
  fi
fi

lock_platform

# Ports of workers about to start must be free (0 means any port); checked before
# anything starts, as infra.sh checks its own.
check_free() { # worker port variable
  local worker=$1 port=$2 variable=$3
  if ((port != 0)) && ! worker_pid "$worker" >/dev/null && port_open "$port"; then
    die "port $port is taken by another process; stop it or set $variable"
  fi
}
check_free executor "$EXECUTOR_PORT" MULAMBDA_EXECUTOR_PORT
check_free selector "$SELECTOR_METRICS_PORT" MULAMBDA_SELECTOR_METRICS_PORT
check_free router "$ROUTER_METRICS_PORT" MULAMBDA_ROUTER_METRICS_PORT
check_free launcher "$LAUNCHER_METRICS_PORT" MULAMBDA_LAUNCHER_METRICS_PORT
check_free probe "$PROBE_PORT" MULAMBDA_PROBE_PORT
if [[ -n $MLSERVER_BIN ]]; then
  check_free mlserver "$MLSERVER_PORT" MULAMBDA_MLSERVER_PORT
  check_free mlserver "$MLSERVER_GRPC_PORT" MULAMBDA_MLSERVER_GRPC_PORT
  check_free mlserver "$MLSERVER_METRICS_PORT" MULAMBDA_MLSERVER_METRICS_PORT
fi
if [[ $WITH_TENSORFLOW == 1 ]]; then
  check_free tf-executor "$TF_EXECUTOR_PORT" MULAMBDA_TF_EXECUTOR_PORT
fi

log "infra: starting Kafka, Redis and MinIO (infra.sh start)"
exports=$("$INFRA" start 7>&-) || die "infra.sh start failed (see above)"
eval "$exports"

if ! "$MULAMBDA_BIN" topics apply >"$WORKERS_DIR/topics-apply.log" 2>&1; then
  sed 's/^/    /' "$WORKERS_DIR/topics-apply.log" >&2
  die "mulambda topics apply failed"
fi
log "topics applied: $(awk '{n[$1]++} END {for (a in n) { printf "%s%d %s", s, n[a], a; s = ", " }}' \
  "$WORKERS_DIR/topics-apply.log")"

# --- workers --------------------------------------------------------------------------

STARTED_THIS_RUN=()

# A failed start stops what this run started, so a retry begins clean.
fail() {
  log "ERROR: $*"
  if ((${#STARTED_THIS_RUN[@]})); then
    log "stopping the workers this run started"
    stop_workers "${STARTED_THIS_RUN[@]}"
  fi
  log "infrastructure left running; deploy/local/down.sh stops it"
  exit 1
}

launch() { # like start_worker; records what this run started
  start_worker "$@"
  if ((STARTED_NOW)); then STARTED_THIS_RUN+=("$1"); fi
}

# wait_until DESCRIPTION CHECK-COMMAND WORKER...: polls the check, failing fast when one
# of the workers exits, and at the shared deadline.
DEADLINE=$((SECONDS + UP_TIMEOUT))
wait_until() {
  local what=$1 check=$2 worker
  shift 2
  until $check; do
    for worker in "$@"; do
      if ! worker_pid "$worker" >/dev/null; then
        show_worker_log "$worker"
        fail "$worker exited while waiting for $what"
      fi
    done
    if ((SECONDS >= DEADLINE)); then
      for worker in "$@"; do show_worker_log "$worker"; done
      fail "$what: not ready after ${UP_TIMEOUT}s (MULAMBDA_UP_TIMEOUT)"
    fi
    sleep 0.5
  done
  log "$what: ready"
}

synthetic_args=()
for model in "${SYNTHETIC_MODELS[@]}"; do synthetic_args+=(--synthetic "$model"); done
launch executor "mulambda executor serve --port $EXECUTOR_PORT " -- \
  "$MULAMBDA_BIN" executor serve --port "$EXECUTOR_PORT" --time-scale "$TIME_SCALE" \
  "${synthetic_args[@]}"
# Stable instance ids (static membership; the router's transactional id in exactly-once
# mode) and 3 s sessions, which the local broker allows: a killed worker's partitions move
# within seconds.
launch selector "mulambda selector" MULAMBDA_METRICS_PORT="$SELECTOR_METRICS_PORT" \
  MULAMBDA_SELECTOR_DEFAULT_POLICY="$DEFAULT_POLICY" \
  MULAMBDA_KAFKA_GROUP_INSTANCE_ID=local-selector MULAMBDA_KAFKA_SESSION_TIMEOUT_S=3 -- \
  "$MULAMBDA_BIN" selector
launch router "mulambda router" MULAMBDA_METRICS_PORT="$ROUTER_METRICS_PORT" \
  MULAMBDA_KAFKA_GROUP_INSTANCE_ID=local-router MULAMBDA_KAFKA_SESSION_TIMEOUT_S=3 -- \
  "$MULAMBDA_BIN" router
# Launch requests (`mulambda executors launch --publish`) become local processes, so an
# administrator's workflow is the one of a cluster; logs under the workers' folder.
launch launcher "mulambda launcher" MULAMBDA_METRICS_PORT="$LAUNCHER_METRICS_PORT" \
  MULAMBDA_LAUNCHER_BACKEND=local MULAMBDA_LAUNCHER_STATE_DIR="$WORKERS_DIR/launched" -- \
  "$MULAMBDA_BIN" launcher
launch probe "mulambda clients serve-probe --port $PROBE_PORT --client-id $DEMO_CLIENT_ID " -- \
  "$MULAMBDA_BIN" clients serve-probe --port "$PROBE_PORT" --client-id "$DEMO_CLIENT_ID" \
  --register

# --- the real models (MLServer; TensorFlow) -------------------------------------------

mlserver_models=$REAL_DIR/mlserver-models
real_facts=$REAL_DIR/$REAL_MODEL.facts.json
# quiet LOG-NAME COMMAND...: runs the command with its output in the workers' folder,
# shown only when it fails.
quiet() {
  local out=$WORKERS_DIR/$1.log
  shift
  if ! "$@" >"$out" 2>&1; then
    sed 's/^/    /' "$out" >&2
    fail "$* failed"
  fi
}
# uploaded NAME: MinIO holds version REAL_MODEL_VERSION of model NAME.
uploaded() {
  "$MULAMBDA_BIN" models list "$1" 2>/dev/null |
    grep -qE "^$1"$'\t'"(.*,)?$REAL_MODEL_VERSION(,|\$)"
}
accuracy_of() { # facts.json written by a training script
  "$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["accuracy"])' "$1"
}

if [[ -n $MLSERVER_BIN ]] && ! worker_pid mlserver >/dev/null; then
  trained=$REAL_DIR/trained/$REAL_MODEL
  if [[ ! -f $trained/model-settings.json || ! -f $real_facts ]]; then
    log "real model: training $REAL_MODEL (scikit-learn, wine data) with MLServer's python"
    quiet train-wine "$(dirname "$MLSERVER_BIN")/python" "$SCRIPT_DIR/train_wine.py" \
      "$trained" "$REAL_MODEL" "$REAL_MODEL_VERSION" "$real_facts"
  fi
  if ! uploaded "$REAL_MODEL"; then
    log "real model: uploading $REAL_MODEL version $REAL_MODEL_VERSION to MinIO"
    quiet models-upload "$MULAMBDA_BIN" models upload "$trained" --name "$REAL_MODEL" \
      --version "$REAL_MODEL_VERSION"
  fi
  # MLServer serves what MinIO holds, as a deployment would pull it.
  mkdir -p "$mlserver_models"
  quiet models-download "$MULAMBDA_BIN" models download "$REAL_MODEL" \
    "$mlserver_models/$REAL_MODEL" --version "$REAL_MODEL_VERSION" --force
  # parallel_workers 0: MLServer's parallel workers die at start with uvloop 0.23.
  cat >"$mlserver_models/settings.json" <<EOF
{"host": "127.0.0.1", "http_port": $MLSERVER_PORT, "grpc_port": $MLSERVER_GRPC_PORT,
 "metrics_port": $MLSERVER_METRICS_PORT, "parallel_workers": 0, "debug": false,
 "server_name": "mulambda-local"}
EOF
fi
if [[ -n $MLSERVER_BIN ]]; then
  # --chdir: MLServer writes its metrics folder into its working directory.
  launch mlserver "mlserver start $mlserver_models" --chdir="$mlserver_models" -- \
    "$MLSERVER_BIN" start "$mlserver_models"
fi

tf_facts=$REAL_DIR/$TF_MODEL.facts.json
if [[ $WITH_TENSORFLOW == 1 ]] && ! worker_pid tf-executor >/dev/null; then
  tf_trained=$REAL_DIR/trained/$TF_MODEL
  if [[ ! -f $tf_trained/saved_model.pb || ! -f $tf_facts ]]; then
    log "real model: training $TF_MODEL (Keras, wine data)"
    rm -rf "$tf_trained"
    quiet train-wine-keras "$VENV/bin/python" "$SCRIPT_DIR/train_wine_keras.py" \
      "$tf_trained" "$tf_facts"
  fi
  if ! uploaded "$TF_MODEL"; then
    log "real model: uploading SavedModel $TF_MODEL version $REAL_MODEL_VERSION to MinIO"
    quiet models-upload-keras "$MULAMBDA_BIN" models upload "$tf_trained" \
      --name "$TF_MODEL" --version "$REAL_MODEL_VERSION"
  fi
fi
if [[ $WITH_TENSORFLOW == 1 ]]; then
  # Pulls the SavedModel from MinIO at start, as a deployed executor would.
  launch tf-executor "mulambda executor serve --port $TF_EXECUTOR_PORT --model $TF_MODEL" \
    TF_CPP_MIN_LOG_LEVEL=2 -- \
    "$MULAMBDA_BIN" executor serve --port "$TF_EXECUTOR_PORT" \
    --model "$TF_MODEL:$REAL_MODEL_VERSION" --model-dir "$REAL_DIR/tf-models"
fi
# Training (a first run's half minute for Keras) is not start-up: the workers' wait for
# readiness counts from here.
DEADLINE=$((SECONDS + UP_TIMEOUT))

executor_ready() {
  local model status
  for model in "${SYNTHETIC_MODELS[@]}"; do
    status=$(curl -sf -m 2 "http://127.0.0.1:$EXECUTOR_PORT/v1/models/$model") || return 1
    [[ $status == *'"AVAILABLE"'* ]] || return 1
  done
}
# Companions start once the executor answers, so their first heartbeat says AVAILABLE.
wait_until "executor on :$EXECUTOR_PORT (${SYNTHETIC_MODELS[*]})" executor_ready executor

endpoint="http://127.0.0.1:$EXECUTOR_PORT"
while read -r model accuracy delay_ms; do
  id=$(executor_id "$model")
  launch "companion-$model" "mulambda companion --executor-id $id " \
    MULAMBDA_METRICS_PORT=0 -- \
    "$MULAMBDA_BIN" companion --executor-id "$id" --endpoint "$endpoint" \
    --model-name "$model" --model-type classification --input-format feature \
    --output-format confidence --accuracy "$accuracy" \
    --model-data-delay-ms-per-element "$delay_ms" --heartbeat-interval 2
done <<<"$PROFILES"

EXECUTOR_IDS=()
for model in "${SYNTHETIC_MODELS[@]}"; do EXECUTOR_IDS+=("$(executor_id "$model")"); done
companion_workers=()
for model in "${SYNTHETIC_MODELS[@]}"; do companion_workers+=("companion-$model"); done
if [[ -n $MLSERVER_BIN ]]; then
  mlserver_ready() {
    curl -sf -m 2 -o /dev/null "http://127.0.0.1:$MLSERVER_PORT/v2/health/ready" &&
      curl -sf -m 2 -o /dev/null "http://127.0.0.1:$MLSERVER_PORT/v2/models/$REAL_MODEL/ready"
  }
  wait_until "MLServer on :$MLSERVER_PORT ($REAL_MODEL)" mlserver_ready mlserver
  real_accuracy=$(accuracy_of "$real_facts")
  id=$(executor_id "$REAL_MODEL")
  launch "companion-$REAL_MODEL" "mulambda companion --executor-id $id " \
    MULAMBDA_METRICS_PORT=0 -- \
    "$MULAMBDA_BIN" companion --executor-id "$id" --protocol oip-v2 \
    --endpoint "http://127.0.0.1:$MLSERVER_PORT" \
    --model-name "$REAL_MODEL" --model-version "$REAL_MODEL_VERSION" \
    --model-type "${REAL_MODEL_TRAITS[0]}" --input-format "${REAL_MODEL_TRAITS[1]}" \
    --output-format "${REAL_MODEL_TRAITS[2]}" --accuracy "$real_accuracy" \
    --heartbeat-interval 2
  EXECUTOR_IDS+=("$id")
  companion_workers+=("companion-$REAL_MODEL")
fi
if [[ $WITH_TENSORFLOW == 1 ]]; then
  tf_ready() {
    local status
    status=$(curl -sf -m 2 "http://127.0.0.1:$TF_EXECUTOR_PORT/v1/models/$TF_MODEL") &&
      [[ $status == *'"AVAILABLE"'* ]]
  }
  wait_until "executor on :$TF_EXECUTOR_PORT ($TF_MODEL from MinIO)" tf_ready tf-executor
  tf_accuracy=$(accuracy_of "$tf_facts")
  id=$(executor_id "$TF_MODEL")
  launch "companion-$TF_MODEL" "mulambda companion --executor-id $id " \
    MULAMBDA_METRICS_PORT=0 -- \
    "$MULAMBDA_BIN" companion --executor-id "$id" \
    --endpoint "http://127.0.0.1:$TF_EXECUTOR_PORT" \
    --model-name "$TF_MODEL" --model-version "$REAL_MODEL_VERSION" \
    --model-type "${REAL_MODEL_TRAITS[0]}" --input-format "${REAL_MODEL_TRAITS[1]}" \
    --output-format "${REAL_MODEL_TRAITS[2]}" --accuracy "$tf_accuracy" \
    --heartbeat-interval 2
  EXECUTOR_IDS+=("$id")
  companion_workers+=("companion-$TF_MODEL")
fi

selector_ready() { curl -sf -m 2 -o /dev/null "http://127.0.0.1:$SELECTOR_METRICS_PORT/readyz"; }
router_ready() { curl -sf -m 2 -o /dev/null "http://127.0.0.1:$ROUTER_METRICS_PORT/readyz"; }
wait_until "selector (:$SELECTOR_METRICS_PORT/readyz)" selector_ready selector
wait_until "router (:$ROUTER_METRICS_PORT/readyz)" router_ready router
launcher_ready() { curl -sf -m 2 -o /dev/null "http://127.0.0.1:$LAUNCHER_METRICS_PORT/readyz"; }
wait_until "launcher (:$LAUNCHER_METRICS_PORT/readyz)" launcher_ready launcher

# The registrations are on the compacted topics: what every selector will see.
registered() {
  local listed model
  listed=$("$MULAMBDA_BIN" executors list 2>/dev/null) || return 1
  for id in "${EXECUTOR_IDS[@]}"; do
    grep -q "^$id"$'\t' <<<"$listed" || return 1
  done
  listed=$("$MULAMBDA_BIN" clients list 2>/dev/null) || return 1
  grep -q "^$DEMO_CLIENT_ID"$'\t' <<<"$listed"
}
wait_until "registrations (${#EXECUTOR_IDS[@]} executors, client $DEMO_CLIENT_ID)" \
  registered "${companion_workers[@]}" probe

log "platform up in $((SECONDS - T0))s; worker logs in $WORKERS_DIR"

# --- next steps (stdout) --------------------------------------------------------------

venv_bin=$VENV/bin
[[ $venv_bin == "$REPO"/* ]] && venv_bin=${venv_bin#"$REPO"/}
env_file=$STATE_DIR/env
[[ $env_file == "$REPO"/* ]] && env_file=${env_file#"$REPO"/}
cat <<EOF
MuLambda is running: executor http://127.0.0.1:$EXECUTOR_PORT (${SYNTHETIC_MODELS[*]}),
selector :$SELECTOR_METRICS_PORT, router :$ROUTER_METRICS_PORT and launcher
:$LAUNCHER_METRICS_PORT (/metrics, /readyz).

Publish a request and wait for its result:

  source $env_file
  $venv_bin/mulambda infer \\
      --client-id $DEMO_CLIENT_ID \\
      --model-type classification --input-format feature --output-format confidence \\
      --latency 0.8 --accuracy 0.2 \\
      --body '{"instances": [0, 1]}'
EOF
real_served=""
if [[ -n $MLSERVER_BIN ]]; then
  real_served="$REAL_MODEL on MLServer :$MLSERVER_PORT (executor $(executor_id "$REAL_MODEL"))"
fi
if [[ $WITH_TENSORFLOW == 1 ]]; then
  real_served="${real_served:+$real_served, }$TF_MODEL on :$TF_EXECUTOR_PORT (executor $(executor_id "$TF_MODEL"))"
fi
if [[ -n $real_served ]]; then
  cat <<EOF

The real wine classifier: $real_served.

  $venv_bin/mulambda infer --client-id $DEMO_CLIENT_ID \\
      --model-type ${REAL_MODEL_TRAITS[0]} --input-format ${REAL_MODEL_TRAITS[1]} --output-format ${REAL_MODEL_TRAITS[2]} \\
      --body '{"instances": [[14.23, 1.71, 2.43, 15.6, 127, 2.8, 3.06, 0.28, 2.29, 5.64, 1.04, 3.92, 1065]]}'
EOF
fi
cat <<EOF

List executors: $venv_bin/mulambda executors list
Stop everything: deploy/local/down.sh
EOF
