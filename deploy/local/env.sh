# shellcheck shell=bash
# Sourced by deploy/local/*.sh: the virtualenv every local script uses.
# Kept beside the checkout (git-ignored) so `pip install -e` sees the working tree.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MULAMBDA_VENV:-$REPO/.venv}"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# venv_has EXTRAS: whether the venv was installed for this pyproject.toml with at least
# EXTRAS (e.g. "dev"; an install with "dev,kubernetes,tensorflow" has it too).
venv_has() {
  local extras="$1" hash stamp have want ok
  hash=$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)
  for stamp in "$VENV"/.mulambda-installed-"$hash"-*; do
    [ -f "$stamp" ] || continue
    have=${stamp##*/.mulambda-installed-"$hash"-}
    ok=1
    for want in ${extras//,/ }; do
      [[ -$have- == *-"$want"-* ]] || ok=0
    done
    if ((ok)); then return 0; fi
  done
  return 1
}

ensure_venv() {
  # $1: extras, e.g. "dev,tensorflow". Re-installs only when pyproject.toml changed (or
  # an extra is missing).
  local extras="$1" stamp
  if [ ! -x "$VENV/bin/python" ]; then
    log "venv: creating $VENV"
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.mulambda-installed-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)-${extras//,/-}"
  if ! venv_has "$extras"; then
    log "venv: installing mulambda[$extras] (log: $VENV/pip.log)"
    if ! "$VENV/bin/pip" install -q -e "${REPO}[$extras]" >"$VENV/pip.log" 2>&1; then
      tail -20 "$VENV/pip.log" >&2
      log "venv: pip install failed; full log in $VENV/pip.log"
      return 1
    fi
    touch "$stamp"
  fi
}
