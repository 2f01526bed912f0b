#!/usr/bin/env bash
# Local infrastructure for MuLambda without Docker: Kafka (a single KRaft node, or
# with MULAMBDA_KAFKA_NODES=3 a cluster of three), Redis (or Dragonfly) and MinIO, as
# plain processes bound to 127.0.0.1.
#
#   deploy/local/infra.sh install|start|status|stop|restart [kafka|redis|minio ...]
#   deploy/local/infra.sh start|status|stop|restart|kill kafka-N   (three-node mode)
#   deploy/local/infra.sh kill COMPONENT ...
#   deploy/local/infra.sh install mlserver
#   deploy/local/infra.sh mlserver-bin
#   deploy/local/infra.sh install|start|status|stop kube
#   deploy/local/infra.sh installed [COMPONENT ...]
#   deploy/local/infra.sh kubectl-bin
#
# No component argument means all three (and, for install, mlserver too). Every
# command is idempotent. mlserver (Seldon MLServer, an Open Inference Protocol v2
# server) is install-only: it gets its own venv in the cache, never mulambda's, and
# the tests that need it start and stop its processes themselves; `mlserver-bin`
# prints where its `mlserver` executable is. kube (a real kube-apiserver on kine,
# with the CRDs of Strimzi and KEDA to install into it) is installed by `install`
# without arguments but started only when named: `start kube`. `installed` exits 0
# when every named component (default: all) is installed, 1 otherwise. `kill` sends
# SIGKILL (a crash, for fault tests) and keeps the data.
# With MULAMBDA_KAFKA_NODES=3, `kafka` means the nodes kafka-1..kafka-3 (each a broker
# and a controller voter, with its own ports, state dir and log); each can also be named
# on its own.
# Progress goes to stderr; `start` prints `export ...` lines on stdout, so
#   eval "$(deploy/local/infra.sh start)"
# works, and the same lines are written to $MULAMBDA_HOME/env for `source`.
# See deploy/local/README.md for the environment variables.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

# Must match <kafka.version> in deploy/local/kafka/pom.xml.
KAFKA_VERSION=3.9.2
MINIO_MODULE=github.com/minio/minio
# MinIO RELEASE.2025-09-07T16-13-09Z. MinIO's tags are not semver, so the Go
# module proxy only knows the release as this pseudo-version of its commit.
MINIO_VERSION=v0.0.0-20250907161309-07c3a429bfed

# MLServer and its scikit-learn runtime, in a venv of their own: their pins would
# fight TensorFlow's and ours in a shared one.
MLSERVER_VERSION=1.7.1

# The test Kubernetes API server: kube-apiserver and kubectl built from this release
# (its staging modules at the matching v0.x), kine as its etcd on SQLite.
KUBE_VERSION=v1.37.2
KUBE_STAGING_VERSION=v0.37.2
KINE_MODULE=github.com/k3s-io/kine
KINE_VERSION=v0.17.5
# Must match <strimzi.version> in deploy/local/strimzi/pom.xml.
STRIMZI_VERSION=1.2.0
KEDA_MODULE=github.com/kedacore/keda/v2
KEDA_VERSION=v2.21.0

ALL_COMPONENTS=(kafka redis minio)
# Installed by `install` without arguments, never started by this script.
INSTALL_ONLY_COMPONENTS=(mlserver)
# Installed by `install` without arguments, started only when named (`start kube`).
OPTIONAL_COMPONENTS=(kube)

# --- configuration (all optional, see README) --------------------------------

CACHE_DIR=${MULAMBDA_CACHE_DIR:-$HOME/.cache/mulambda}
STATE_DIR=${MULAMBDA_HOME:-$REPO_ROOT/.mulambda}
KAFKA_PORT=${MULAMBDA_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${MULAMBDA_KAFKA_CONTROLLER_PORT:-9093}
# 1: the single node `kafka` (state in $MULAMBDA_HOME/kafka). 3: nodes kafka-1..kafka-3,
# ports from the comma lists below (default: KAFKA_PORT and KAFKA_CONTROLLER_PORT, then
# every second port after them: 9092,9094,9096 and 9093,9095,9097).
KAFKA_NODES=${MULAMBDA_KAFKA_NODES:-1}
KAFKA_PORTS=${MULAMBDA_KAFKA_PORTS:-}
KAFKA_CONTROLLER_PORTS=${MULAMBDA_KAFKA_CONTROLLER_PORTS:-}
REDIS_PORT=${MULAMBDA_REDIS_PORT:-6379}
MINIO_PORT=${MULAMBDA_MINIO_PORT:-9000}
MINIO_CONSOLE_PORT=${MULAMBDA_MINIO_CONSOLE_PORT:-9001}
KUBE_PORT=${MULAMBDA_KUBE_PORT:-6443}
KINE_PORT=${MULAMBDA_KINE_PORT:-2379}
MINIO_ACCESS_KEY=${MULAMBDA_MINIO_ACCESS_KEY:-mulambda}
MINIO_SECRET_KEY=${MULAMBDA_MINIO_SECRET_KEY:-mulambda-secret}
START_TIMEOUT=${MULAMBDA_START_TIMEOUT:-60}
# plaintext (default, the quick start) or sasl_ssl: SCRAM-SHA-512 users per role over
# TLS, with ACLs from mulambda.security (see README, "Security").
KAFKA_SECURITY=${MULAMBDA_KAFKA_SECURITY:-plaintext}
# The interpreter that applies the ACLs (it imports mulambda from this checkout).
MULAMBDA_PY=${MULAMBDA_PYTHON:-${MULAMBDA_VENV:-$REPO_ROOT/.venv}/bin/python}
# C1 only: a fresh broker's C2 compiler burnt ~6 of its 12 CPU-seconds per 15 s of the
# fault suite's 100 requests/s, more than serving them; C1 code serves this load as fast.
KAFKA_JAVA_OPTS=${MULAMBDA_KAFKA_JAVA_OPTS:--XX:TieredStopAtLevel=1}
STOP_TIMEOUT=15
# A killed JVM can take seconds to release its memory, files and ports on a loaded machine.
KILL_TIMEOUT=30

# Relative paths would break once we cd or hand them to a detached process.
case $CACHE_DIR in /*) ;; *) CACHE_DIR=$PWD/$CACHE_DIR ;; esac
case $STATE_DIR in /*) ;; *) STATE_DIR=$PWD/$STATE_DIR ;; esac

LOG_DIR=$CACHE_DIR/logs
KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
KAFKA_MAIN_JAR=kafka_2.13-$KAFKA_VERSION.jar
MINIO_BIN=$CACHE_DIR/minio/$MINIO_VERSION/bin/minio
# Where an earlier, unversioned `GOBIN=$CACHE/minio/bin go install` put MinIO;
# adopted (hard link) when its embedded module version is the pinned one.
MINIO_LEGACY_BIN=$CACHE_DIR/minio/bin/minio
MLSERVER_HOME=$CACHE_DIR/mlserver-$MLSERVER_VERSION
KUBE_HOME=$CACHE_DIR/kubernetes-$KUBE_VERSION
KUBE_APISERVER_BIN=$KUBE_HOME/bin/kube-apiserver
KUBECTL_BIN=$KUBE_HOME/bin/kubectl
KINE_BIN=$CACHE_DIR/kine-$KINE_VERSION/bin/kine
STRIMZI_HOME=$CACHE_DIR/strimzi-$STRIMZI_VERSION
CRD_DIR=$CACHE_DIR/crds/strimzi-$STRIMZI_VERSION-keda-$KEDA_VERSION
MLSERVER_BIN=$MLSERVER_HOME/current/bin/mlserver
# The interpreter the venv is made from (MLServer 1.7 supports Python 3.9-3.12).
MLSERVER_PYTHON=${MULAMBDA_MLSERVER_PYTHON:-python3}

# --- small helpers ------------------------------------------------------------

log() { printf '%s infra: %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() { # [exit-code]: 0 prints to stdout (asked for help), else stderr
  local code=${1:-2}
  if ((code != 0)); then exec 1>&2; fi
  cat <<EOF
usage: ${0##*/} install|start|status|stop|restart [kafka|redis|minio|kube ...]
       ${0##*/} start|status|stop|restart|kill kafka-N      (MULAMBDA_KAFKA_NODES=3)
       ${0##*/} kill COMPONENT ...
       ${0##*/} install mlserver | mlserver-bin | kubectl-bin | crd-dir | installed [COMPONENT ...]
  install  fetch/build artefacts into \$MULAMBDA_CACHE_DIR ($CACHE_DIR);
           without components also MLServer $MLSERVER_VERSION (install-only)
           and kube (kube-apiserver $KUBE_VERSION, kubectl, kine $KINE_VERSION, CRDs)
  installed     exit 0 if every named component (default: all) is installed, else 1
  mlserver-bin  print the path of the installed mlserver executable
  kubectl-bin   print the path of the installed kubectl
  crd-dir       print the directory holding the generated CRDs (Strimzi, KEDA)
  start kube    kine + kube-apiserver on 127.0.0.1:$KUBE_PORT (never started by default);
                admin kubeconfig: \$MULAMBDA_HOME/kube/admin.kubeconfig
  start    install if needed, start, wait until ready, print export lines
  status   one line per component; exit 0 if all running, 3 otherwise
  stop     stop the processes recorded in our pid files
  restart  stop, then start
  kill     kill -9 the named components (a crash: data kept, no clean shutdown)
Kafka nodes: MULAMBDA_KAFKA_NODES=1 (default: one node, \`kafka\`) or 3 (kafka-1..kafka-3,
replication 3, min.insync.replicas 2; ports MULAMBDA_KAFKA_PORTS, MULAMBDA_KAFKA_CONTROLLER_PORTS).
State, data and logs live in \$MULAMBDA_HOME ($STATE_DIR).
EOF
  exit "$code"
}

require_int() { # name value
  [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a whole number, got '$2'"
}

require_port() { # name value
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
    die "$1 must be a TCP port (1-65535), got '$2'"
  fi
}

require_cmd() { # command hint
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"
}

comp_dir() { printf '%s/%s' "$STATE_DIR" "$1"; }

# Which family of functions (<kind>_install, _prepare, _launch, _ready) runs a
# component; they get the component's name as their argument.
comp_kind() {
  case $1 in
    kafka-[1-9]) echo kafka_node ;;
    *) echo "$1" ;;
  esac
}
pid_file() { printf '%s/%s/%s.pid' "$STATE_DIR" "$1" "$1"; }
log_file() { printf '%s/%s/%s.log' "$STATE_DIR" "$1" "$1"; }

# Ports a component needs; the first is the one clients use.
comp_ports() {
  case $1 in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ;;
    kafka-[1-9]) echo "${KAFKA_NODE_PORTS[${1#kafka-} - 1]} ${KAFKA_NODE_CONTROLLER_PORTS[${1#kafka-} - 1]}" ;;
    redis) echo "$REDIS_PORT" ;;
    minio) echo "$MINIO_PORT $MINIO_CONSOLE_PORT" ;;
    kine) echo "$KINE_PORT" ;;
    kube) echo "$KUBE_PORT" ;;
  esac
}

# What the command line of our process looks like. Checked before trusting a pid
# file, so a pid recycled by an unrelated process (after a reboot, say) is
# never signalled.
comp_pattern() {
  case $1 in
    kafka) echo 'kafka\.Kafka' ;;
    # All nodes run the same main class: each is told apart by its own config file.
    kafka-[1-9]) echo "kafka\\.Kafka .*/$1/server\\.properties" ;;
    redis) echo 'redis-server|dragonfly' ;;
    minio) echo 'minio server' ;;
    kine) echo 'kine .*--listen-address' ;;
    kube) echo 'kube-apiserver' ;;
  esac
}

# Prints the pid and succeeds if the component's pid file names a live process
# of ours.
# detach COMP LOG CMD...: start CMD in its own session with its output in LOG and
# record its pid. The process writes its own pid before exec'ing, because `$!` is
# the pid of setsid, which forks (and exits at once) when it leads a process group,
# as it does when this script runs under a job-controlling shell. 8>&- 9>&-: our
# lock fds must not be inherited, or the daemon would hold the locks for its life.
detach() {
  local comp=$1 logfile=$2 pidfile
  shift 2
  pidfile=$(pid_file "$comp")
  rm -f "$pidfile"
  # shellcheck disable=SC2016 # $$ and "$@" belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    </dev/null >"$logfile" 2>&1 8>&- 9>&- &
  local waited=0
  until [[ -s $pidfile ]]; do
    ((waited++ < 100)) || { log "ERROR: $comp: no pid after 10s"; return 1; }
    sleep 0.1
  done
}

running_pid() {
  local comp=$1 file pid stat args
  file=$(pid_file "$comp")
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # -ww: full command lines; ps cuts them at $COLUMNS (often 80) otherwise.
  read -r stat args < <(ps -ww -o stat=,args= -p "$pid" 2>/dev/null) || return 1
  # An exited process nobody has reaped yet (state Z) is gone for our purposes,
  # unless it still has live threads ("Zl": only its main thread ended).
  if [[ $stat == Z* && $stat != *l* ]]; then return 1; fi
  grep -Eq "$(comp_pattern "$comp")" <<<"$args" || return 1
  echo "$pid"
}

# Whether process $1 has ended: gone, or exited and not yet reaped (Z without live
# threads). Not running_pid: an exiting process loses its command line (its memory goes
# first) while it still holds its files, ports and the log directory's lock.
process_ended() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ -z $stat || ($stat == Z* && $stat != *l*) ]]
}

# Wait up to $2 seconds for process $1 to end; false if it has not.
await_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  until process_ended "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# The pid file and the ports the process was started with (shown by status).
forget_pid() {
  rm -f "$(pid_file "$1")" "$(comp_dir "$1")/$1.ports"
}

clean_stale_pid() {
  local comp=$1 file
  file=$(pid_file "$comp")
  if [[ -f $file ]] && ! running_pid "$comp" >/dev/null; then
    log "$comp: removing stale pid file $file"
    forget_pid "$comp"
  fi
}

# True if something accepts TCP connections on 127.0.0.1:port. Bash's /dev/tcp
# needs no extra tool; loopback refuses instantly, timeout guards the rest.
port_open() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash, on purpose.
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Serialise callers sharing a directory: two `start`s racing on one
# MULAMBDA_HOME, or two clones installing into one cache. flock is util-linux;
# without it we simply run unlocked.
lock() { # fd file
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$(dirname "$2")"
  eval "exec $1>\"\$2\""
  if ! flock -n "$1"; then
    log "waiting for lock $2 (another infra.sh is running)"
    flock -w 900 "$1" || die "gave up waiting for lock $2"
  fi
}

unlock() { # fd
  eval "exec $1>&-"
}

# Substitutes @KEY@ placeholders; fails if any placeholder is left unfilled.
render() { # template output KEY=VALUE...
  local tmpl=$1 out=$2 kv key val
  shift 2
  local sed_args=()
  for kv in "$@"; do
    key=${kv%%=*}
    val=$(printf '%s' "${kv#*=}" | sed -e 's/[\\&|]/\\&/g')
    sed_args+=(-e "s|@${key}@|${val}|g")
  done
  sed "${sed_args[@]}" "$tmpl" >"$out.tmp"
  if grep -Eq '@[A-Z_]+@' "$out.tmp"; then
    rm -f "$out.tmp"
    die "unfilled placeholder in $tmpl"
  fi
  mv -f "$out.tmp" "$out"
}

# Keep the previous run's log for post-mortems, start each run with a fresh
# one (readiness checks grep the whole file).
rotate_log() {
  local file=$1
  if [[ -f $file ]]; then mv -f "$file" "$file.prev"; fi
}

show_log_tail() {
  local file=$1
  if [[ -s $file ]]; then
    log "last 20 lines of $file:"
    tail -n 20 "$file" | sed 's/^/    /' >&2
  else
    log "$file is empty"
  fi
}

# Runs an install step with all its output in $LOG_DIR/<name>.log; on failure
# says which step failed and where to look.
run_logged() { # step-description log-name command...
  local step=$1 logfile=$LOG_DIR/$2.log before
  shift 2
  mkdir -p "$LOG_DIR"
  printf '\n=== %s  %s\n' "$(date '+%F %T')" "$*" >>"$logfile"
  before=$(wc -l <"$logfile")
  if ! "$@" >>"$logfile" 2>&1; then
    log "ERROR: $step failed; see $logfile"
    # Only this attempt's output: the log accumulates across runs.
    tail -n +"$((before + 1))" "$logfile" | tail -n 20 | sed 's/^/    /' >&2
    return 1
  fi
}

# go_install_to BIN CGO_ENABLED LOG-NAME MODULE@VERSION: `go install` into a temp GOBIN
# beside BIN and rename, so a killed build never leaves a half-written binary at BIN (the
# module's binary is named as BIN).
go_install_to() {
  local bin=$1 cgo=$2 logname=$3 target=$4 bindir tmp
  bindir=$(dirname "$bin")
  mkdir -p "$bindir"
  rm -rf "$bindir"/.tmp.*
  tmp=$(mktemp -d "$bindir/.tmp.XXXXXX")
  if ! run_logged "${logname%-install} install (go install $target)" "$logname" \
    env GOBIN="$tmp" CGO_ENABLED="$cgo" go install "$target"; then
    rm -rf "$tmp"
    exit 1
  fi
  mv -f "$tmp/$(basename "$bin")" "$bin"
  rm -rf "$tmp"
}

# maven_classpath POM LIBS LOG-NAME [REQUIRED-JAR]: POM's runtime dependencies copied by
# Maven into a temp dir beside LIBS, renamed to LIBS on success: LIBS existing always means
# complete. Run under the install's lock (leftovers of interrupted runs are removed).
maven_classpath() {
  local pom=$1 libs=$2 logname=$3 required=${4:-} tmp
  mkdir -p "$(dirname "$libs")"
  rm -rf "$libs".tmp.*
  tmp=$(mktemp -d "$libs.tmp.XXXXXX")
  if ! run_logged "${logname%-install} install (mvn dependency:copy-dependencies)" "$logname" \
    mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp"; then
    rm -rf "$tmp"
    exit 1
  fi
  if [[ -n $required && ! -f $tmp/$required ]]; then
    rm -rf "$tmp"
    die "${logname%-install} install: Maven finished but $required is missing; see $LOG_DIR/$logname.log"
  fi
  rm -rf "$libs" # only ever an incomplete copy made by other means
  mv -T "$tmp" "$libs"
}

# --- Kafka --------------------------------------------------------------------

kafka_installed() { [[ -f $KAFKA_LIBS/$KAFKA_MAIN_JAR ]]; }

kafka_install() {
  kafka_installed && { log "kafka: $KAFKA_VERSION already in $KAFKA_LIBS"; return 0; }
  require_cmd java "install a JDK >= 11, e.g. apt-get install -y openjdk-17-jre-headless"
  require_cmd mvn "apt-get install -y maven"
  lock 8 "$CACHE_DIR/locks/kafka-$KAFKA_VERSION.lock"
  # Someone may have finished while we waited for the lock.
  if ! kafka_installed; then
    log "kafka: resolving $KAFKA_VERSION jars with Maven (log: $LOG_DIR/kafka-install.log)"
    maven_classpath "$SCRIPT_DIR/kafka/pom.xml" "$KAFKA_LIBS" kafka-install "$KAFKA_MAIN_JAR"
    log "kafka: installed $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars into $KAFKA_LIBS"
  fi
  unlock 8
}

# JVM options shared by the broker and the storage tool: the cached classpath
# and our log4j config (without it log4j only prints "no appenders" warnings).
# MULAMBDA_KAFKA_REQUEST_LOG=FILE logs every request the broker completes to FILE (one
# JSON document per line; benchmarks count them), at a CPU cost.
kafka_jvm_opts() { # [state-dir of the node]
  local log4j=$SCRIPT_DIR/kafka/log4j.properties
  [[ -n ${MULAMBDA_KAFKA_REQUEST_LOG:-} ]] && log4j=$SCRIPT_DIR/kafka/log4j-requests.properties
  KAFKA_JVM_OPTS=(
    -Djava.awt.headless=true
    -Dlog4j.configuration="file:$log4j"
    -Dmulambda.request.log="${MULAMBDA_KAFKA_REQUEST_LOG:-/dev/null}"
    -Dkafka.logs.dir="${1:-$(comp_dir kafka)}"
    -cp "$KAFKA_LIBS/*"
  )
}

# KRaft storage must be formatted once with a cluster id before first start.
# The id is kept in the state dir so a re-format (after deleting data/) keeps
# the same cluster identity; the nodes of a cluster share one id file.
kafka_format() { # [component [cluster-id-file]]
  local comp=${1:-kafka} dir data idfile
  dir=$(comp_dir "$comp")
  idfile=${2:-$dir/cluster-id}
  data=$dir/data
  [[ -f $data/meta.properties ]] && return 0
  kafka_jvm_opts "$dir"
  if [[ ! -s $idfile ]]; then
    local id
    id=$(java "${KAFKA_JVM_OPTS[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    # Kafka cluster ids are 16 random bytes in URL-safe base64.
    [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "$comp: could not generate a cluster id (got '$id')"
    echo "$id" >"$idfile"
  fi
  log "$comp: formatting storage in $data (cluster id $(<"$idfile"))"
  if ! java "${KAFKA_JVM_OPTS[@]}" kafka.tools.StorageTool format --ignore-formatted \
    -t "$(<"$idfile")" -c "$dir/server.properties" "${KAFKA_SCRAM_ARGS[@]}" \
    >"$dir/format.log" 2>&1; then
    show_log_tail "$dir/format.log"
    die "$comp: storage format failed; see $dir/format.log"
  fi
}

# Config and storage, done before anything is launched.
kafka_prepare() {
  local dir formatted
  require_cmd java "install a JDK >= 11, e.g. apt-get install -y openjdk-17-jre-headless"
  dir=$(comp_dir kafka)
  mkdir -p "$dir/data"
  # Users exist from the storage format on: a store formatted in the other mode has
  # none (or the wrong listeners), and wiping it is the user's call.
  formatted=$(cat "$dir/security" 2>/dev/null || echo plaintext)
  if [[ -f $dir/data/meta.properties && $formatted != "$KAFKA_SECURITY" ]]; then
    die "kafka: $dir/data was formatted for MULAMBDA_KAFKA_SECURITY=$formatted, not $KAFKA_SECURITY; remove $dir/data (its topics are lost) or use another MULAMBDA_HOME"
  fi
  render "$SCRIPT_DIR/kafka/server.properties.tmpl" "$dir/server.properties" \
    KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
    KAFKA_DATA_DIR="$dir/data" KAFKA_NODE_ID=1 \
    KAFKA_QUORUM_VOTERS="1@127.0.0.1:$KAFKA_CONTROLLER_PORT" \
    KAFKA_REPLICATION=1 KAFKA_MIN_ISR=1
  KAFKA_SCRAM_ARGS=()
  if [[ $KAFKA_SECURITY == sasl_ssl ]]; then kafka_secure "$dir"; fi
  kafka_format
  echo "$KAFKA_SECURITY" >"$dir/security"
}

# --- secured Kafka (MULAMBDA_KAFKA_SECURITY=sasl_ssl) ----------------------------

KAFKA_BROKER_USER=mulambda-broker

kafka_roles() { # the roles of mulambda.security, one per line
  [[ -x $MULAMBDA_PY ]] || die "kafka: $MULAMBDA_PY not found: the secured broker needs mulambda's Python (set MULAMBDA_PYTHON or MULAMBDA_VENV)"
  PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH} "$MULAMBDA_PY" -m mulambda acls roles
}

# A random secret in FILE (made once, readable by its owner only).
secret_file() { # file
  [[ -s $1 ]] && return 0
  (umask 077 && openssl rand -hex 24 >"$1.tmp" && mv -f "$1.tmp" "$1")
}

# CA and broker certificate (CN=$KAFKA_BROKER_USER, SAN 127.0.0.1 and localhost),
# made once per MULAMBDA_HOME; clients trust tls/ca.pem.
kafka_tls() { # tls-dir
  local tls=$1
  [[ -s $tls/broker.p12 && -s $tls/ca.pem ]] && return 0
  require_cmd openssl "needed to make the local CA; apt-get install -y openssl"
  log "kafka: making a CA and broker certificate in $tls"
  (
    umask 077
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -keyout ca.key -out ca.pem \
      -subj "/CN=MuLambda local CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout broker.key -out broker.csr \
      -subj "/CN=$KAFKA_BROKER_USER"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >broker.ext
    openssl x509 -req -sha256 -days 825 -in broker.csr -CA ca.pem -CAkey ca.key \
      -CAcreateserial -extfile broker.ext -out broker.pem
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "file:keystore.password" -out broker.p12.tmp
    mv -f broker.p12.tmp broker.p12
    chmod 644 ca.pem
  ) >"$tls/openssl.log" 2>&1 || { show_log_tail "$tls/openssl.log"; die "kafka: making certificates failed"; }
}

# Users (one per role, plus the broker's), TLS material and the listener config.
kafka_secure() { # kafka-dir
  local dir=$1 tls=$1/tls users=$1/users role roles
  mkdir -p "$tls" "$users"
  chmod 700 "$tls" "$users"
  require_cmd openssl "needed for the local CA and passwords; apt-get install -y openssl"
  secret_file "$tls/keystore.password"
  kafka_tls "$tls"
  roles=$(kafka_roles) || die "kafka: cannot list the roles (mulambda acls roles)"
  for role in $KAFKA_BROKER_USER $roles; do
    secret_file "$users/$role.password"
    KAFKA_SCRAM_ARGS+=(--add-scram "SCRAM-SHA-512=[name=$role,password=$(<"$users/$role.password")]")
  done
  render "$SCRIPT_DIR/kafka/sasl_ssl.properties.tmpl" "$dir/security.properties" \
    KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
    BROKER_USER="$KAFKA_BROKER_USER" BROKER_PASSWORD="$(<"$users/$KAFKA_BROKER_USER.password")" \
    TLS_DIR="$tls" KEYSTORE_PASSWORD="$(<"$tls/keystore.password")"
  cat "$dir/security.properties" >>"$dir/server.properties"
  rm -f "$dir/security.properties"
  chmod 600 "$dir/server.properties"
}

kafka_secured() { [[ $(cat "$(comp_dir kafka)/security" 2>/dev/null) == sasl_ssl ]]; }

# Client settings of USER on the secured broker, as exports.
kafka_secure_env() { # user
  local dir
  dir=$(comp_dir kafka)
  printf 'export MULAMBDA_KAFKA_SECURITY_PROTOCOL=SASL_SSL\n'
  printf 'export MULAMBDA_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n'
  printf 'export MULAMBDA_KAFKA_SSL_CAFILE=%q\n' "$dir/tls/ca.pem"
  printf 'export MULAMBDA_KAFKA_SASL_USERNAME=%q\n' "$1"
  printf 'export MULAMBDA_KAFKA_SASL_PASSWORD_FILE=%q\n' "$dir/users/$1.password"
}

# Every role's ACLs (mulambda acls apply), as the broker's super user; topic names
# carry MULAMBDA_TOPIC_PREFIX. Idempotent: existing ACLs are left as they are.
kafka_apply_acls() {
  log "kafka: applying the ACLs of every role (mulambda acls apply)"
  if ! (
    eval "$(kafka_secure_env "$KAFKA_BROKER_USER")"
    export MULAMBDA_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
    PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH} "$MULAMBDA_PY" -m mulambda acls apply
  ) >"$(comp_dir kafka)/acls.log" 2>&1; then
    show_log_tail "$(comp_dir kafka)/acls.log"
    return 1
  fi
}

# Class data sharing for the broker (AppCDS): the classes a broker loads, parsed and laid
# out once in an archive of this JDK's, mapped by every later start instead of being read
# from 57 jars again (the JVM's start was most of a broker restart on a loaded 2-core
# machine). The first start without an archive writes one when the broker exits cleanly
# (a temp file, renamed by the next start); a JDK that cannot use it ignores it.
kafka_cds_opts() { # [component]: nodes of a cluster launched together each write their own
  local jdk archive suffix=$$
  [[ ${1:-kafka} == kafka ]] || suffix=$$.$1
  KAFKA_CDS_OPTS=()
  [[ ${MULAMBDA_KAFKA_CDS:-1} == 1 ]] || return 0
  jdk=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.vm.version/ { print $2 }' | tr -c 'A-Za-z0-9.+_\n-' _)
  [[ -n $jdk ]] || return 0
  archive=$KAFKA_HOME/cds/kafka-$jdk.jsa
  mkdir -p "$(dirname "$archive")"
  local made
  for made in "$archive".tmp.*; do
    [[ -s $made && ! -s $archive ]] && mv -f "$made" "$archive"
    rm -f "$made"
  done
  if [[ -s $archive ]]; then
    KAFKA_CDS_OPTS=(-XX:SharedArchiveFile="$archive" -Xshare:auto)
  else
    KAFKA_CDS_OPTS=(-XX:ArchiveClassesAtExit="$archive.tmp.$suffix")
  fi
}

kafka_launch() { # [component]: kafka, or a node kafka-N
  local comp=${1:-kafka} dir
  dir=$(comp_dir "$comp")
  rotate_log "$dir/$comp.log"
  kafka_jvm_opts "$dir"
  kafka_cds_opts "$comp"
  # Own session (detach): the broker outlives this shell and ignores the
  # terminal's Ctrl-C/hangup. Small heap: the machines have 2 cores and the
  # local workload is tiny.
  local extra=()
  read -r -a extra <<<"$KAFKA_JAVA_OPTS"
  detach "$comp" "$dir/$comp.log" java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError "${KAFKA_CDS_OPTS[@]}" "${extra[@]}" "${KAFKA_JVM_OPTS[@]}" \
    kafka.Kafka "$dir/server.properties"
}

kafka_ready() {
  port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$(log_file kafka)"
}

# --- Kafka cluster (MULAMBDA_KAFKA_NODES=3): nodes kafka-1..kafka-N ------------------
#
# Every node is a broker and a controller voter (the quorum is all of them), renders the
# same template as the single node with its own id and ports, plus cluster.properties.tmpl
# (fast fencing of a dead broker). Replication is the node count, min.insync.replicas 2,
# for user and internal topics alike: acks=all writes survive one node down.

# Ports of the nodes, from the comma lists or derived from the single-node ports.
kafka_node_ports() {
  local i
  KAFKA_NODE_PORTS=() KAFKA_NODE_CONTROLLER_PORTS=()
  ((KAFKA_NODES > 1)) || return 0
  if [[ -n $KAFKA_PORTS ]]; then
    IFS=, read -r -a KAFKA_NODE_PORTS <<<"$KAFKA_PORTS"
  else
    for ((i = 0; i < KAFKA_NODES; i++)); do KAFKA_NODE_PORTS+=($((KAFKA_PORT + 2 * i))); done
  fi
  if [[ -n $KAFKA_CONTROLLER_PORTS ]]; then
    IFS=, read -r -a KAFKA_NODE_CONTROLLER_PORTS <<<"$KAFKA_CONTROLLER_PORTS"
  else
    for ((i = 0; i < KAFKA_NODES; i++)); do
      KAFKA_NODE_CONTROLLER_PORTS+=($((KAFKA_CONTROLLER_PORT + 2 * i)))
    done
  fi
  ((${#KAFKA_NODE_PORTS[@]} == KAFKA_NODES)) ||
    die "MULAMBDA_KAFKA_PORTS must list $KAFKA_NODES ports (one per node), got '$KAFKA_PORTS'"
  ((${#KAFKA_NODE_CONTROLLER_PORTS[@]} == KAFKA_NODES)) ||
    die "MULAMBDA_KAFKA_CONTROLLER_PORTS must list $KAFKA_NODES ports (one per node), got '$KAFKA_CONTROLLER_PORTS'"
  for i in "${KAFKA_NODE_PORTS[@]}"; do require_port MULAMBDA_KAFKA_PORTS "$i"; done
  for i in "${KAFKA_NODE_CONTROLLER_PORTS[@]}"; do require_port MULAMBDA_KAFKA_CONTROLLER_PORTS "$i"; done
}

kafka_nodes() { # the node components, one per line
  local i
  for ((i = 1; i <= KAFKA_NODES; i++)); do echo "kafka-$i"; done
}

kafka_quorum_voters() { # id@host:port of every controller, comma-separated
  local i voters=()
  for ((i = 0; i < KAFKA_NODES; i++)); do
    voters+=("$((i + 1))@127.0.0.1:${KAFKA_NODE_CONTROLLER_PORTS[i]}")
  done
  (IFS=,; echo "${voters[*]}")
}

kafka_bootstrap() { # what clients bootstrap from: every broker of the cluster
  local i servers=()
  if ((KAFKA_NODES == 1)); then
    echo "127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  for ((i = 0; i < KAFKA_NODES; i++)); do servers+=("127.0.0.1:${KAFKA_NODE_PORTS[i]}"); done
  (IFS=,; echo "${servers[*]}")
}

kafka_node_installed() { kafka_installed; }
kafka_node_install() { kafka_install; }

kafka_node_prepare() { # component
  local comp=$1 dir id
  require_cmd java "install a JDK >= 11, e.g. apt-get install -y openjdk-17-jre-headless"
  [[ $KAFKA_SECURITY == plaintext ]] ||
    die "$comp: MULAMBDA_KAFKA_SECURITY=$KAFKA_SECURITY needs the single node (MULAMBDA_KAFKA_NODES=1)"
  id=${comp#kafka-}
  dir=$(comp_dir "$comp")
  mkdir -p "$dir/data"
  render "$SCRIPT_DIR/kafka/server.properties.tmpl" "$dir/server.properties" \
    KAFKA_PORT="${KAFKA_NODE_PORTS[id - 1]}" \
    KAFKA_CONTROLLER_PORT="${KAFKA_NODE_CONTROLLER_PORTS[id - 1]}" \
    KAFKA_DATA_DIR="$dir/data" KAFKA_NODE_ID="$id" \
    KAFKA_QUORUM_VOTERS="$(kafka_quorum_voters)" \
    KAFKA_REPLICATION="$KAFKA_NODES" KAFKA_MIN_ISR=2
  cat "$SCRIPT_DIR/kafka/cluster.properties.tmpl" >>"$dir/server.properties"
  KAFKA_SCRAM_ARGS=()
  kafka_format "$comp" "$STATE_DIR/kafka-cluster-id"
}

kafka_node_launch() { kafka_launch "$1"; }

kafka_node_ready() { # component: listening, and the broker says it started
  local ports
  ports=$(comp_ports "$1")
  port_open "${ports%% *}" && grep -q 'Kafka Server started' "$(log_file "$1")"
}

# --- Redis (or Dragonfly) -----------------------------------------------------

# Dragonfly speaks the Redis protocol and is preferred when present.
redis_binary() {
  if command -v dragonfly >/dev/null 2>&1; then
    command -v dragonfly
  elif command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
  else
    return 1
  fi
}

redis_installed() { redis_binary >/dev/null; }

apt_install_redis() {
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the package lists when the install fails: it is slow and
  # usually unnecessary.
  apt-get install -y redis-server || { apt-get update && apt-get install -y redis-server; }
}

redis_install() {
  if redis_installed; then
    log "redis: using $(redis_binary)"
    return 0
  fi
  require_cmd apt-get "install redis-server (or dragonfly) with your package manager"
  [[ $EUID -eq 0 ]] || die "redis: redis-server is missing; run 'sudo apt-get install -y redis-server' (this script does not use sudo)"
  lock 8 "$CACHE_DIR/locks/apt.lock"
  log "redis: apt-get install redis-server (log: $LOG_DIR/redis-install.log)"
  run_logged "redis install (apt-get install redis-server)" redis-install apt_install_redis || exit 1
  unlock 8
  redis_installed || die "redis: apt-get succeeded but redis-server is not on PATH"
  log "redis: installed $(redis_binary)"
  # Debian's package may start a system-wide redis on 6379 where an init
  # system runs; that is not ours and `start` will then report the port taken.
}

redis_prepare() {
  local dir
  dir=$(comp_dir redis)
  mkdir -p "$dir/data"
  # Dragonfly takes flags instead of a config file.
  if [[ $(basename "$(redis_binary)") != dragonfly ]]; then
    render "$SCRIPT_DIR/redis.conf.tmpl" "$dir/redis.conf" \
      REDIS_PORT="$REDIS_PORT" REDIS_DATA_DIR="$dir/data"
  fi
}

redis_launch() {
  local dir bin
  dir=$(comp_dir redis)
  bin=$(redis_binary)
  rotate_log "$dir/redis.log"
  if [[ $(basename "$bin") == dragonfly ]]; then
    detach redis "$dir/redis.log" "$bin" --port "$REDIS_PORT" --bind 127.0.0.1 \
      --dir "$dir/data" --logtostderr
  else
    detach redis "$dir/redis.log" "$bin" "$dir/redis.conf"
  fi
}

redis_ready() {
  if command -v redis-cli >/dev/null 2>&1; then
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
  else
    # Plain RESP over /dev/tcp when only Dragonfly is installed.
    # shellcheck disable=SC2016 # expanded by the inner bash, on purpose.
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "PING\r\n" >&3; read -r l <&3; [[ $l == "+PONG"* ]]' \
      _ "$REDIS_PORT" 2>/dev/null
  fi
}

# --- MinIO --------------------------------------------------------------------

minio_installed() { [[ -x $MINIO_BIN ]]; }

# True if the binary was built from the pinned module version (Go embeds it).
minio_is_pinned_build() {
  [[ -x $1 ]] && command -v go >/dev/null 2>&1 &&
    go version -m "$1" 2>/dev/null |
    awk -v m="$MINIO_MODULE" -v v="$MINIO_VERSION" '$1 == "mod" && $2 == m && $3 == v { ok = 1 } END { exit !ok }'
}

minio_install() {
  minio_installed && { log "minio: $MINIO_VERSION already in $MINIO_BIN"; return 0; }
  lock 8 "$CACHE_DIR/locks/minio-$MINIO_VERSION.lock"
  if ! minio_installed; then
    local bindir
    bindir=$(dirname "$MINIO_BIN")
    mkdir -p "$bindir"
    rm -rf "$bindir"/.tmp.*
    if minio_is_pinned_build "$MINIO_LEGACY_BIN"; then
      log "minio: adopting existing build $MINIO_LEGACY_BIN"
      ln -f "$MINIO_LEGACY_BIN" "$bindir/.tmp.minio" 2>/dev/null ||
        cp -f "$MINIO_LEGACY_BIN" "$bindir/.tmp.minio"
      mv -f "$bindir/.tmp.minio" "$MINIO_BIN"
    else
      require_cmd go "MinIO is built from source; install Go >= 1.24"
      log "minio: building $MINIO_MODULE@$MINIO_VERSION; takes several minutes on a cold Go cache (log: $LOG_DIR/minio-install.log)"
      go_install_to "$MINIO_BIN" 0 minio-install "$MINIO_MODULE@$MINIO_VERSION"
    fi
    log "minio: installed $MINIO_BIN"
  fi
  unlock 8
}

minio_prepare() {
  require_cmd curl "needed for MinIO's readiness check; apt-get install -y curl"
  # MinIO refuses to start otherwise; say so before spawning anything.
  [[ ${#MINIO_ACCESS_KEY} -ge 3 ]] || die "MULAMBDA_MINIO_ACCESS_KEY must have at least 3 characters"
  [[ ${#MINIO_SECRET_KEY} -ge 8 ]] || die "MULAMBDA_MINIO_SECRET_KEY must have at least 8 characters"
  mkdir -p "$(comp_dir minio)/data"
}

minio_launch() {
  local dir
  dir=$(comp_dir minio)
  rotate_log "$dir/minio.log"
  # Credentials go through the environment of this one process only.
  MINIO_ROOT_USER=$MINIO_ACCESS_KEY MINIO_ROOT_PASSWORD=$MINIO_SECRET_KEY \
    detach minio "$dir/minio.log" "$MINIO_BIN" server --address "127.0.0.1:$MINIO_PORT" \
    --console-address "127.0.0.1:$MINIO_CONSOLE_PORT" "$dir/data"
}

minio_ready() {
  curl -sf -m 2 -o /dev/null "http://127.0.0.1:$MINIO_PORT/minio/health/ready"
}

# --- Kubernetes API server (kine + kube-apiserver; `start kube`, never by default) ---
#
# A real kube-apiserver with kine (etcd's API over SQLite) as its storage, for tests
# that apply manifests: no kubelet, no controllers, so nothing applied ever runs.
# kube-apiserver and kubectl are built from k8s.io/kubernetes: a throw-away module
# requires it and pins every staging module (k8s.io/api, ...) that its own go.mod
# replaces with a local path to the matching v0.x release.

kube_installed() {
  [[ -x $KUBE_APISERVER_BIN && -x $KUBECTL_BIN ]] && kine_installed && crds_installed
}

kube_build() {
  local src=$KUBE_HOME/src bindir tmp staging
  require_cmd go "kube-apiserver is built from source; install Go >= 1.26"
  mkdir -p "$src"
  log "kube: resolving k8s.io/kubernetes@$KUBE_VERSION (log: $LOG_DIR/kube-install.log)"
  run_logged "kube install (go mod download k8s.io/kubernetes@$KUBE_VERSION)" kube-install \
    env GOFLAGS=-mod=mod go mod download "k8s.io/kubernetes@$KUBE_VERSION" || exit 1
  # The staging modules, read from the release's own replace block.
  staging=$(sed -n '/^replace (/,/^)/p' \
    "$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION/go.mod" | awk '$2 == "=>" { print $1 }')
  [[ -n $staging ]] || die "kube install: no replace block in k8s.io/kubernetes@$KUBE_VERSION's go.mod"
  {
    printf 'module mulambda.local/kube-tools\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\n' \
      "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" "$KUBE_VERSION"
    local module
    for module in $staging; do printf 'replace %s => %s %s\n' "$module" "$module" "$KUBE_STAGING_VERSION"; done
  } >"$src/go.mod"
  # go mod tidy keeps only what a package of the module imports.
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n' >"$src/tools.go"
  rm -f "$src/go.sum"
  (cd "$src" && run_logged "kube install (go mod tidy)" kube-install go mod tidy) || exit 1
  bindir=$(dirname "$KUBE_APISERVER_BIN")
  mkdir -p "$bindir"
  rm -rf "$bindir"/.tmp.*
  tmp=$(mktemp -d "$bindir/.tmp.XXXXXX")
  log "kube: building kube-apiserver and kubectl $KUBE_VERSION; about 8 minutes on a cold Go cache with 2 cores (log: $LOG_DIR/kube-install.log)"
  if ! (cd "$src" && run_logged "kube install (go build kube-apiserver kubectl)" kube-install \
    go build -o "$tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl); then
    rm -rf "$tmp"
    exit 1
  fi
  mv -f "$tmp/kube-apiserver" "$KUBE_APISERVER_BIN"
  mv -f "$tmp/kubectl" "$KUBECTL_BIN"
  rm -rf "$tmp"
  log "kube: installed $KUBE_APISERVER_BIN and $KUBECTL_BIN"
}

kube_install() {
  if [[ -x $KUBE_APISERVER_BIN && -x $KUBECTL_BIN ]]; then
    log "kube: $KUBE_VERSION already in $(dirname "$KUBE_APISERVER_BIN")"
  else
    lock 8 "$CACHE_DIR/locks/kube-$KUBE_VERSION.lock"
    [[ -x $KUBE_APISERVER_BIN && -x $KUBECTL_BIN ]] || kube_build
    unlock 8
  fi
  kine_install
  crds_install
}

kine_installed() { [[ -x $KINE_BIN ]]; }

kine_install() {
  kine_installed && { log "kine: $KINE_VERSION already in $KINE_BIN"; return 0; }
  lock 8 "$CACHE_DIR/locks/kine-$KINE_VERSION.lock"
  if ! kine_installed; then
    require_cmd go "kine is built from source; install Go >= 1.24"
    log "kine: building $KINE_MODULE@$KINE_VERSION; about 2 minutes on a cold Go cache (log: $LOG_DIR/kine-install.log)"
    # SQLite is a cgo driver: kine needs CGO (and a C compiler) for it.
    go_install_to "$KINE_BIN" 1 kine-install "$KINE_MODULE@$KINE_VERSION"
    log "kine: installed $KINE_BIN"
  fi
  unlock 8
}

# The CustomResourceDefinitions of what deploy/k8s uses besides core Kubernetes: Strimzi's,
# generated from its Maven artifacts, and KEDA's, as shipped in its Go module.
crds_installed() { [[ -f $CRD_DIR/.complete ]]; }

# A Java that runs Strimzi's generator (class files for Java 21).
strimzi_java() {
  local candidate version
  for candidate in ${MULAMBDA_STRIMZI_JAVA:-} "$(command -v java 2>/dev/null)" /usr/lib/jvm/*/bin/java; do
    [[ -n $candidate && -x $candidate ]] || continue
    version=$("$candidate" -XshowSettings:properties -version 2>&1 |
      awk -F' = ' '/java.specification.version/ { print $2 }')
    if [[ $version =~ ^[0-9]+$ ]] && ((version >= 21)); then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

crds_install() {
  crds_installed && { log "crds: Strimzi $STRIMZI_VERSION and KEDA $KEDA_VERSION already in $CRD_DIR"; return 0; }
  require_cmd mvn "apt-get install -y maven"
  local java
  java=$(strimzi_java) || die "Strimzi $STRIMZI_VERSION's CRD generator needs Java >= 21; set MULAMBDA_STRIMZI_JAVA"
  lock 8 "$CACHE_DIR/locks/crds-$STRIMZI_VERSION-$KEDA_VERSION.lock"
  if ! crds_installed; then
    local tmp libs=$STRIMZI_HOME/libs kind class keda_dir
    if [[ ! -d $libs ]]; then
      log "crds: resolving Strimzi $STRIMZI_VERSION jars with Maven (log: $LOG_DIR/crds-install.log)"
      maven_classpath "$SCRIPT_DIR/strimzi/pom.xml" "$libs" crds-install
    fi
    mkdir -p "$(dirname "$CRD_DIR")"
    rm -rf "$CRD_DIR".tmp.*
    tmp=$(mktemp -d "$CRD_DIR.tmp.XXXXXX")
    local args=()
    for kind in topic.KafkaTopic kafka.Kafka nodepool.KafkaNodePool user.KafkaUser; do
      class=io.strimzi.api.kafka.model.$kind
      args+=("$class=$tmp/strimzi-${kind#*.}.yaml")
    done
    log "crds: generating Strimzi's Kafka, KafkaNodePool, KafkaTopic and KafkaUser CRDs"
    if ! run_logged "crds install (Strimzi CrdGenerator)" crds-install \
      "$java" -cp "$libs/*" io.strimzi.crdgenerator.CrdGenerator --yaml "${args[@]}"; then
      rm -rf "$tmp"
      exit 1
    fi
    log "crds: KEDA $KEDA_VERSION's ScaledObject and TriggerAuthentication CRDs from its Go module"
    if ! keda_dir=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$KEDA_MODULE@$KEDA_VERSION" |
      awk -F'"' '$2 == "Dir" { print $4 }') || [[ -z $keda_dir ]]; then
      rm -rf "$tmp"
      die "crds install: go mod download $KEDA_MODULE@$KEDA_VERSION failed"
    fi
    for kind in scaledobjects triggerauthentications; do
      cp "$keda_dir/config/crd/bases/keda.sh_$kind.yaml" "$tmp/keda-$kind.yaml" || {
        rm -rf "$tmp"
        die "crds install: $KEDA_MODULE@$KEDA_VERSION has no config/crd/bases/keda.sh_$kind.yaml"
      }
    done
    chmod 644 "$tmp"/*.yaml
    touch "$tmp/.complete"
    chmod 755 "$tmp"
    rm -rf "$CRD_DIR"
    mv -T "$tmp" "$CRD_DIR"
    log "crds: installed $(find "$CRD_DIR" -name '*.yaml' | wc -l) CRDs into $CRD_DIR"
  fi
  unlock 8
}

kine_prepare() { mkdir -p "$(comp_dir kine)"; }

kine_launch() {
  local dir
  dir=$(comp_dir kine)
  rotate_log "$dir/kine.log"
  # Metrics off (0): kine would otherwise take :8080 on every interface.
  detach kine "$dir/kine.log" "$KINE_BIN" --listen-address "127.0.0.1:$KINE_PORT" \
    --endpoint "sqlite://$dir/state.db?_journal=WAL&cache=shared" --metrics-bind-address 0
}

kine_ready() { port_open "$KINE_PORT"; }

# Credentials and keys of the API server, made once per MULAMBDA_HOME: a CA and a
# serving certificate for 127.0.0.1, the service-account signing key, and a static
# token for an administrator in system:masters.
kube_prepare() {
  require_cmd openssl "apt-get install -y openssl"
  require_cmd curl "needed for the API server's readiness check; apt-get install -y curl"
  local dir pki
  dir=$(comp_dir kube)
  pki=$dir/pki
  mkdir -p "$pki"
  chmod 700 "$pki"
  if [[ ! -s $pki/apiserver.crt ]]; then
    log "kube: making a CA, a serving certificate and service-account keys in $pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mulambda-test-ca" \
      -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >"$pki/san.ext"
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 3650 -extfile "$pki/san.ext" -out "$pki/apiserver.crt.tmp" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    # Renamed last: the serving certificate existing means all of the above do.
    mv -f "$pki/apiserver.crt.tmp" "$pki/apiserver.crt"
  fi
  if [[ ! -s $dir/admin.token ]]; then
    (umask 077 && openssl rand -hex 32 >"$dir/admin.token.tmp" && mv -f "$dir/admin.token.tmp" "$dir/admin.token")
  fi
  (umask 077 && printf '%s,mulambda-admin,mulambda-admin,"system:masters"\n' "$(<"$dir/admin.token")" >"$pki/tokens.csv")
  # The administrator's kubeconfig (its port follows MULAMBDA_KUBE_PORT).
  (umask 077 && cat >"$dir/admin.kubeconfig.tmp" <<KUBECONFIG && mv -f "$dir/admin.kubeconfig.tmp" "$dir/admin.kubeconfig"
apiVersion: v1
kind: Config
clusters:
  - name: mulambda-test
    cluster: {server: "https://127.0.0.1:$KUBE_PORT", certificate-authority: "$pki/ca.crt"}
users:
  - name: mulambda-admin
    user: {token: "$(<"$dir/admin.token")"}
contexts:
  - name: mulambda-test
    context: {cluster: mulambda-test, user: mulambda-admin}
current-context: mulambda-test
KUBECONFIG
  )
}

kube_launch() {
  local dir pki waited=0
  dir=$(comp_dir kube)
  pki=$dir/pki
  # kube-apiserver gives up on storage it cannot reach at start-up.
  until kine_ready; do
    ((waited++ < 60)) || { log "ERROR: kube: kine is not listening on $KINE_PORT"; return 1; }
    sleep 0.5
  done
  rotate_log "$dir/kube.log"
  detach kube "$dir/kube.log" "$KUBE_APISERVER_BIN" \
    --etcd-servers="http://127.0.0.1:$KINE_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$KUBE_PORT" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --cert-dir="$dir/certs" \
    --endpoint-reconciler-type=none \
    --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --profiling=false
}

kube_ready() {
  curl -sf -m 2 -o /dev/null --cacert "$(comp_dir kube)/pki/ca.crt" "https://127.0.0.1:$KUBE_PORT/readyz"
}

# --- MLServer (install only) -----------------------------------------------------

mlserver_installed() { [[ -x $MLSERVER_BIN ]]; }

# A venv cannot be moved (its scripts' shebangs name its path), so it is built
# in a uniquely named directory where it stays, and the `current` symlink is
# switched to it by rename once pip has succeeded: `current` existing always
# means complete, as `libs` does for Kafka.
mlserver_install() {
  mlserver_installed && { log "mlserver: $MLSERVER_VERSION already in $MLSERVER_HOME"; return 0; }
  require_cmd "$MLSERVER_PYTHON" "MLServer needs Python 3.9-3.12; set MULAMBDA_MLSERVER_PYTHON"
  lock 8 "$CACHE_DIR/locks/mlserver-$MLSERVER_VERSION.lock"
  if ! mlserver_installed; then
    local venv
    mkdir -p "$MLSERVER_HOME"
    # Leftovers of interrupted installs (and venvs `current` no longer names);
    # safe to remove while we hold the lock.
    find "$MLSERVER_HOME" -mindepth 1 -maxdepth 1 -name 'venv.*' \
      ! -name "$(basename "$(readlink "$MLSERVER_HOME/current" 2>/dev/null || echo none)")" \
      -exec rm -rf {} +
    venv=$(mktemp -d "$MLSERVER_HOME/venv.XXXXXX")
    chmod 755 "$venv" # mktemp makes it private; the cache is shared
    log "mlserver: pip install mlserver==$MLSERVER_VERSION mlserver-sklearn==$MLSERVER_VERSION into $venv; takes about a minute (log: $LOG_DIR/mlserver-install.log)"
    if ! run_logged "mlserver install (python -m venv)" mlserver-install \
      "$MLSERVER_PYTHON" -m venv "$venv" ||
      ! run_logged "mlserver install (pip install mlserver)" mlserver-install \
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
        "mlserver==$MLSERVER_VERSION" "mlserver-sklearn==$MLSERVER_VERSION"; then
      rm -rf "$venv"
      exit 1
    fi
    [[ -x $venv/bin/mlserver ]] || {
      rm -rf "$venv"
      die "mlserver install: pip finished but bin/mlserver is missing; see $LOG_DIR/mlserver-install.log"
    }
    ln -sfn "$(basename "$venv")" "$MLSERVER_HOME/current.tmp"
    mv -Tf "$MLSERVER_HOME/current.tmp" "$MLSERVER_HOME/current"
    log "mlserver: installed $MLSERVER_BIN"
  fi
  unlock 8
}

# --- generic lifecycle --------------------------------------------------------

ensure_installed() {
  local kind
  kind=$(comp_kind "$1")
  "${kind}_installed" "$1" || "${kind}_install" "$1"
}

# Waits for readiness; on failure shows the log, stops the half-started
# process and fails, so a failed start leaves nothing behind.
wait_ready() {
  local comp=$1 pid deadline
  pid=$(<"$(pid_file "$comp")")
  deadline=$((SECONDS + START_TIMEOUT))
  while ! "$(comp_kind "$comp")_ready" "$comp"; do
    if ! running_pid "$comp" >/dev/null; then
      show_log_tail "$(log_file "$comp")"
      forget_pid "$comp"
      log "ERROR: $comp exited during startup; full log: $(log_file "$comp")"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$(log_file "$comp")"
      log "ERROR: $comp (pid $pid) not ready after ${START_TIMEOUT}s (MULAMBDA_START_TIMEOUT); stopping it"
      stop_component "$comp" || true
      return 1
    fi
    sleep 0.5
  done
  log "$comp: ready (pid $pid, port $(comp_ports "$comp" | cut -d' ' -f1))"
}

stop_component() {
  local comp=$1 pid
  if ! pid=$(running_pid "$comp"); then
    clean_stale_pid "$comp"
    log "$comp: not running"
    return 0
  fi
  log "$comp: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  if ! await_exit "$pid" "$STOP_TIMEOUT"; then
    log "$comp: still alive after ${STOP_TIMEOUT}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    await_exit "$pid" "$KILL_TIMEOUT" || die "$comp: pid $pid outlived kill -9 by ${KILL_TIMEOUT}s"
  fi
  forget_pid "$comp"
  log "$comp: stopped"
}

# kill -9: what a crash does. The data stays (a restart recovers it as after a power cut).
kill_component() {
  local comp=$1 pid
  if ! pid=$(running_pid "$comp"); then
    clean_stale_pid "$comp"
    log "$comp: not running"
    return 0
  fi
  log "$comp: kill -9 pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  await_exit "$pid" "$KILL_TIMEOUT" || die "$comp: pid $pid outlived kill -9 by ${KILL_TIMEOUT}s"
  forget_pid "$comp"
  log "$comp: killed"
}

# The connection settings for the MuLambda services, as shell exports (on a secured
# broker: the administrator's; each worker sets its role's user and password file).
env_lines() {
  printf 'export MULAMBDA_KAFKA_BOOTSTRAP_SERVERS=%q\n' "$(kafka_bootstrap)"
  if kafka_secured; then kafka_secure_env administrator; fi
  printf 'export MULAMBDA_REDIS_URL=%q\n' "redis://127.0.0.1:$REDIS_PORT/0"
  printf 'export MULAMBDA_MINIO_ENDPOINT=%q\n' "127.0.0.1:$MINIO_PORT"
  printf 'export MULAMBDA_MINIO_ACCESS_KEY=%q\n' "$MINIO_ACCESS_KEY"
  printf 'export MULAMBDA_MINIO_SECRET_KEY=%q\n' "$MINIO_SECRET_KEY"
}

write_env_file() {
  mkdir -p "$STATE_DIR"
  env_lines >"$STATE_DIR/env.tmp"
  mv -f "$STATE_DIR/env.tmp" "$STATE_DIR/env"
}

# --- commands -----------------------------------------------------------------

cmd_install() {
  local comp
  for comp in "$@"; do "$(comp_kind "$comp")_install" "$comp"; done
}

cmd_installed() {
  local comp missing=0
  for comp in "$@"; do
    "$(comp_kind "$comp")_installed" "$comp" || { log "$comp: not installed"; missing=1; }
  done
  return "$missing"
}

cmd_start() {
  local comp pid port recorded to_launch=() conflicts=()
  mkdir -p "$STATE_DIR"
  lock 9 "$STATE_DIR/.infra.lock"
  # Check everything before launching anything, so a taken port does not
  # leave a half-started set behind.
  for comp in "$@"; do
    if pid=$(running_pid "$comp"); then
      recorded=$(cat "$(comp_dir "$comp")/$comp.ports" 2>/dev/null || true)
      if [[ -n $recorded && $recorded != "$(comp_ports "$comp")" ]]; then
        log "$comp: already running (pid $pid) on port(s) $recorded, not the requested $(comp_ports "$comp"); use restart to apply"
      else
        log "$comp: already running (pid $pid)"
      fi
      continue
    fi
    clean_stale_pid "$comp"
    for port in $(comp_ports "$comp"); do
      if port_open "$port"; then
        conflicts+=("$comp: port $port on 127.0.0.1 is already in use by another process")
      fi
    done
    to_launch+=("$comp")
  done
  if ((${#conflicts[@]})); then
    for comp in "${conflicts[@]}"; do log "ERROR: $comp"; done
    exit 1
  fi
  for comp in "${to_launch[@]}"; do ensure_installed "$comp"; done
  # Everything that can fail cheaply (configs, credentials, Kafka's storage
  # format) happens before the first process is spawned.
  for comp in "${to_launch[@]}"; do "$(comp_kind "$comp")_prepare" "$comp"; done
  # Launch all, then wait for all: start-up time is the slowest, not the sum.
  for comp in "${to_launch[@]}"; do
    log "$comp: starting (log: $(log_file "$comp"))"
    "$(comp_kind "$comp")_launch" "$comp"
    # Not a job of this shell: no "Killed" notices if we have to stop it.
    disown -a
    comp_ports "$comp" >"$(comp_dir "$comp")/$comp.ports"
  done
  local failed=0
  for comp in "${to_launch[@]}"; do
    wait_ready "$comp" || failed=1
  done
  ((failed == 0)) || exit 1
  if [[ " ${to_launch[*]} " == *" kafka "* ]] && kafka_secured; then
    kafka_apply_acls || { stop_component kafka || true; die "kafka: applying ACLs failed"; }
  fi
  # The settings name Kafka, Redis and MinIO: not written for `start kube` alone.
  if [[ " $* " =~ \ (kafka|kafka-[1-9]|redis|minio)\  ]]; then
    write_env_file
    log "connection settings written to $STATE_DIR/env"
    env_lines
  fi
}

cmd_stop() {
  local comp nodes=()
  # Nothing was ever started here: don't create the state dir just to lock it.
  if [[ -d $STATE_DIR ]]; then lock 9 "$STATE_DIR/.infra.lock"; fi
  for comp in "$@"; do
    case $comp in
      kafka-[1-9]) nodes+=("$comp") ;;
      *) stop_component "$comp" ;;
    esac
  done
  # The nodes of a cluster stop together: one by one, the last ones would wait for a
  # controller quorum that the first ones took away.
  for comp in "${nodes[@]}"; do stop_component "$comp" & done
  wait
}

cmd_kill() {
  local comp
  if [[ -d $STATE_DIR ]]; then lock 9 "$STATE_DIR/.infra.lock"; fi
  for comp in "$@"; do kill_component "$comp"; done
}

cmd_status() {
  local comp pid port state all_running=0
  for comp in "$@"; do
    if pid=$(running_pid "$comp"); then
      port=$(cat "$(comp_dir "$comp")/$comp.ports" 2>/dev/null || comp_ports "$comp")
      port=${port%% *}
      state=running
      port_open "$port" || state="running (port $port not answering yet)"
    else
      pid=- port=$(comp_ports "$comp") port=${port%% *} state=stopped all_running=3
    fi
    printf '%-6s %-8s pid=%-8s port=%s\n' "$comp" "$state" "$pid" "$port"
  done
  return "$all_running"
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1 arg comps=()
  case $KAFKA_NODES in
    1 | 3) ;;
    *) die "MULAMBDA_KAFKA_NODES must be 1 or 3, got '$KAFKA_NODES'" ;;
  esac
  case $cmd in
    -h | --help | help) usage 0 ;;
    # Where tests find the binary (mulambda's own code never runs MLServer).
    mlserver-bin)
      [[ $# -eq 1 ]] || usage
      mlserver_installed || die "mlserver is not installed; run: bash deploy/local/infra.sh install mlserver"
      echo "$MLSERVER_BIN"
      return 0
      ;;
    kubectl-bin)
      [[ $# -eq 1 ]] || usage
      [[ -x $KUBECTL_BIN ]] || die "kubectl is not installed; run: bash deploy/local/infra.sh install kube"
      echo "$KUBECTL_BIN"
      return 0
      ;;
    crd-dir)
      [[ $# -eq 1 ]] || usage
      crds_installed || die "the CRDs are not installed; run: bash deploy/local/infra.sh install kube"
      echo "$CRD_DIR"
      return 0
      ;;
  esac
  shift
  for arg in "$@"; do
    case $arg in
      kafka | redis | minio) [[ " ${comps[*]} " == *" $arg "* ]] || comps+=("$arg") ;;
      kafka-[1-9])
        ((KAFKA_NODES > 1 && ${arg#kafka-} <= KAFKA_NODES)) ||
          die "no Kafka node '$arg' (MULAMBDA_KAFKA_NODES=$KAFKA_NODES; the single node is 'kafka')"
        [[ " ${comps[*]} " == *" $arg "* ]] || comps+=("$arg")
        ;;
      mlserver)
        [[ $cmd == install || $cmd == installed ]] || die "mlserver is install-only: tests start and stop its processes"
        [[ " ${comps[*]} " == *" $arg "* ]] || comps+=("$arg")
        ;;
      kube)
        # Two processes: kine (storage) first, the API server after it; stopped in reverse.
        if [[ $cmd == install || $cmd == installed ]]; then
          comps+=(kube)
        elif [[ $cmd == stop ]]; then
          comps+=(kube kine)
        else
          comps+=(kine kube)
        fi
        ;;
      *) log "unknown component '$arg' (expected kafka, redis, minio, kube or mlserver)"; usage ;;
    esac
  done
  if ((${#comps[@]} == 0)); then
    [[ $cmd != kill ]] || { log "kill needs the components to kill"; usage; }
    comps=("${ALL_COMPONENTS[@]}")
    if [[ $cmd == install || $cmd == installed ]]; then
      comps+=("${OPTIONAL_COMPONENTS[@]}" "${INSTALL_ONLY_COMPONENTS[@]}")
    fi
  fi
  # In the cluster, `kafka` is its nodes (installing them is installing Kafka once).
  if ((KAFKA_NODES > 1)) && [[ $cmd != install && $cmd != installed ]]; then
    local expanded=() node
    for arg in "${comps[@]}"; do
      if [[ $arg == kafka ]]; then
        for node in $(kafka_nodes); do
          [[ " ${comps[*]} " == *" $node "* ]] || expanded+=("$node")
        done
      else
        expanded+=("$arg")
      fi
    done
    comps=("${expanded[@]}")
  fi

  local var
  for var in KAFKA_PORT KAFKA_CONTROLLER_PORT REDIS_PORT MINIO_PORT MINIO_CONSOLE_PORT KUBE_PORT KINE_PORT; do
    require_port "MULAMBDA_$var" "${!var}"
  done
  kafka_node_ports
  require_int MULAMBDA_START_TIMEOUT "$START_TIMEOUT"
  case $KAFKA_SECURITY in
    plaintext | sasl_ssl) ;;
    *) die "MULAMBDA_KAFKA_SECURITY must be plaintext or sasl_ssl, got '$KAFKA_SECURITY'" ;;
  esac

  case $cmd in
    install) cmd_install "${comps[@]}" ;;
    installed) cmd_installed "${comps[@]}" ;;
    start) cmd_start "${comps[@]}" ;;
    stop) cmd_stop "${comps[@]}" ;;
    restart) cmd_stop "${comps[@]}" && cmd_start "${comps[@]}" ;;
    status) cmd_status "${comps[@]}" ;;
    kill) cmd_kill "${comps[@]}" ;;
    -h | --help | help) usage 0 ;;
    *) log "unknown command '$cmd'"; usage ;;
  esac
}

main "$@"
