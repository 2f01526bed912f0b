#!/usr/bin/env bash
# Stop what deploy/local/up.sh started: the workers (by their pid files, only when the
# process's command line is still ours; MLServer with the real model is one of them),
# then Kafka, Redis and MinIO (infra.sh stop).
#
#   deploy/local/down.sh                # workers and infrastructure
#   deploy/local/down.sh --keep-infra   # workers only
#
# Companions and the demo client's probe get SIGTERM like the rest and deregister
# themselves, so the infrastructure is stopped only after every worker has exited.
# Idempotent: nothing running is fine. Data stays in $MULAMBDA_HOME (default .mulambda/).
set -euo pipefail
# shellcheck source=deploy/local/platform.sh
source "$(dirname "${BASH_SOURCE[0]}")/platform.sh"

keep_infra=0
for arg in "$@"; do
  case $arg in
    --keep-infra) keep_infra=1 ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (expected --keep-infra)" ;;
  esac
done

if [[ -d $WORKERS_DIR ]]; then
  lock_platform
  mapfile -t names < <(worker_names)
  if ((${#names[@]})); then
    stop_workers "${names[@]}"
  else
    log "no workers running"
  fi
else
  log "no workers running"
fi

if ((keep_infra)); then
  log "infrastructure left running (--keep-infra)"
else
  "$INFRA" stop 7>&-
fi
