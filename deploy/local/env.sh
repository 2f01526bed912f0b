# shellcheck shell=bash
# Sourced by deploy/local/*.sh: the virtualenv every local script uses.
# Kept beside the checkout (git-ignored) so `pip install -e` sees the working tree.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MULAMBDA_VENV:-$REPO/.venv}"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_venv() {
  # $1: extras, e.g. "dev,tensorflow". Re-installs only when pyproject.toml changed.
  local extras="$1" stamp
  if [ ! -x "$VENV/bin/python" ]; then
    log "venv: creating $VENV"
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.mulambda-installed-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)-${extras//,/-}"
  if [ ! -f "$stamp" ]; then
    log "venv: installing mulambda[$extras] (log: $VENV/pip.log)"
    if ! "$VENV/bin/pip" install -q -e "${REPO}[$extras]" >"$VENV/pip.log" 2>&1; then
      tail -20 "$VENV/pip.log" >&2
      log "venv: pip install failed; full log in $VENV/pip.log"
      return 1
    fi
    touch "$stamp"
  fi
}
