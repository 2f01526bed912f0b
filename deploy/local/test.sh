#!/usr/bin/env bash
# The whole test suite: installs what it needs (infra.sh install, cached), then lint, types,
# unit and integration tests against real Kafka, Redis, MinIO, MLServer and a
# kube-apiserver (the session fixtures start them through deploy/local/infra.sh when needed),
# and the fault suite (tests/faults: kills and restarts on a private platform of its own,
# about 8 minutes; MULAMBDA_FAULTS=0 leaves it out).
# Extra arguments go to pytest, e.g. `deploy/local/test.sh -m unit`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"

# kubernetes: the launcher (`mulambda executors launch`) is tested with its optional extra;
# bench: the load harness smoke test (hdrhistogram, matplotlib).
extras="dev,kubernetes,bench"
# TensorFlow backs the real-SavedModel tests; skip it with MULAMBDA_TEST_TENSORFLOW=0.
if [ "${MULAMBDA_TEST_TENSORFLOW:-1}" = "1" ]; then extras="dev,kubernetes,tensorflow,bench"; fi
ensure_venv "$extras"
# Every server and tool the tests use (Kafka, Redis, MinIO, MLServer, kube-apiserver with
# kine and the CRDs): installed when missing, cached in ~/.cache/mulambda, so a test never
# skips or errors for lack of an install step.
log "installing what the tests need (deploy/local/infra.sh install; cached)"
bash "$REPO/deploy/local/infra.sh" install

log "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
log "mypy --strict"
"$VENV/bin/mypy"
log "topic catalog up to date"
"$VENV/bin/mulambda" topics generate --check
log "deploy/k8s KafkaTopics and KafkaUsers up to date"
"$VENV/bin/mulambda" deploy generate --check
log "pytest"
export MULAMBDA_FAULTS="${MULAMBDA_FAULTS:-1}"
exec "$VENV/bin/pytest" "$@"
