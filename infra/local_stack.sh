#!/usr/bin/env bash
# The whole "cluster" on one machine, on 127.0.0.1: SeaweedFS S3, an MLflow tracking server and a
# Ray head with token auth. For trying `avtime submit` / `avtime compare` locally, and for tests.
#
#   infra/local_stack.sh start [s3] [mlflow] [ray]   start (default: all three), print the env
#   infra/local_stack.sh env                         print the exports again
#   infra/local_stack.sh status                      which are up
#   infra/local_stack.sh stop [s3] [mlflow] [ray]    stop them by PID (their own process groups)
#
#   eval "$(infra/local_stack.sh start)"             start and export in one go
#
# Exit status: 0 done; 1 a server did not start or stop; 2 usage error (unknown command or
# component, extra arguments; nothing is started, stopped or printed on stdout); 3 `status` with
# at least one component stopped.
#
# Settings (environment; defaults in brackets):
#   AVTIME_STACK_DIR      state, data, logs, PIDs and generated credentials
#                         [${XDG_STATE_HOME:-~/.local/state}/avtime-stack]
#   AVTIME_BIN            folder with weed, mlflow, ray, avtime [the repo's .venv/bin, else PATH]
#   AVTIME_S3_PORT [8333] AVTIME_MLFLOW_PORT [5000]
#   AVTIME_RAY_PORT [6379] AVTIME_RAY_DASHBOARD_PORT [8265] AVTIME_RAY_CLIENT_PORT [10001]
#   AVTIME_RAY_CPUS       logical CPUs of the head [nproc]
#   AVTIME_RAY_TMP        Ray's temp dir; keep it short (unix socket paths) [/tmp/avtime-ray-UID-PORT]
#   AVTIME_RAY_EXTRA_ARGS more `ray start` flags, e.g. the other ports when several stacks share
#                         a machine (--node-manager-port=... --min-worker-port=...)
#   AVTIME_WEED_{MASTER,VOLUME,FILER,WEBDAV,ADMIN,DEBUG}_PORT   SeaweedFS internals
#                         [9333 9340 8888 7333 23646 6060]; each also uses its port + 10000 (gRPC)
#   AVTIME_S3_BUCKETS     buckets created at start [avtime]
#   AVTIME_MLFLOW_ALLOWED_HOSTS  the MLflow server's --allowed-hosts: the Host headers it answers
#                         (MLflow >= 3.5 refuses others with 403 "Invalid Host header"); comma-
#                         separated, `*` matches anything [localhost and 127.0.0.1 on any port,
#                         and the names a cluster uses: mlflow.mlflow.svc.cluster.local and its
#                         shorter forms, mlflow.internal; each with and without :5000]
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   the S3 identity [generated once, kept in the dir]
# Secrets (the S3 keys and the Ray token) live in files of mode 600 in AVTIME_STACK_DIR; the
# printed exports read those files instead of showing the values. ~/.ray/auth_token is never
# written: the token is only in the environment of the Ray head and of what you export it to.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DIR="${AVTIME_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/avtime-stack}"
if [[ -z "${AVTIME_BIN:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/ray" ]]; then AVTIME_BIN="$ROOT/.venv/bin"
  else AVTIME_BIN="$(dirname "$(command -v ray || echo /usr/bin/ray)")"; fi
fi
BIN="$AVTIME_BIN"
S3_PORT="${AVTIME_S3_PORT:-8333}"
MLFLOW_PORT="${AVTIME_MLFLOW_PORT:-5000}"
RAY_PORT="${AVTIME_RAY_PORT:-6379}"
DASH_PORT="${AVTIME_RAY_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${AVTIME_RAY_CLIENT_PORT:-10001}"
RAY_CPUS="${AVTIME_RAY_CPUS:-$(nproc)}"
# Ray's unix sockets need a short path: keep its temp dir short, one per stack.
RAY_TMP="${AVTIME_RAY_TMP:-/tmp/avtime-ray-$(id -u)-$RAY_PORT}"
CLUSTER_HOSTS="mlflow,mlflow:5000,mlflow.mlflow,mlflow.mlflow:5000,mlflow.mlflow.svc"
CLUSTER_HOSTS+=",mlflow.mlflow.svc:5000,mlflow.mlflow.svc.cluster.local"
CLUSTER_HOSTS+=",mlflow.mlflow.svc.cluster.local:5000,mlflow.internal,mlflow.internal:5000"
MLFLOW_ALLOWED_HOSTS="${AVTIME_MLFLOW_ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*,$CLUSTER_HOSTS}"
ALL=(s3 mlflow ray)

log() { echo "local_stack: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }
usage_error() { log "error: $*"; usage; exit 2; }

need() {  # need NAME: the executable NAME from $BIN, or die naming what to install
  [[ -x "$BIN/$1" ]] || die "$BIN/$1 not found: set AVTIME_BIN, or install avtime's dev extra"
}

new_secret() { "$BIN/python" -c 'import secrets; print(secrets.token_hex(24))'; }

write_private() {  # write_private FILE: stdin -> FILE, readable by you only
  (umask 077; cat > "$1")
}

wait_http() {  # wait_http URL SECONDS PID: until URL answers any HTTP status
  "$BIN/python" - "$1" "$2" "$3" <<'PY'
import os, sys, time, urllib.error, urllib.request
url, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"the process for {url} exited; see its log")
    try:
        urllib.request.urlopen(url, timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(f"{url} not ready after {timeout:.0f}s")
PY
}

pid_of() {  # pid_of NAME: the recorded PID if that process is still alive, else nothing
  local f="$DIR/pids/$1.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

launch() {  # launch NAME CMD...: run CMD in its own session (PID = process group id)
  local name="$1"; shift
  mkdir -p "$DIR/pids" "$DIR/logs"
  setsid "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name.pid"
  echo $!
}

s3_credentials() {  # the S3 identity: from the environment, else generated once
  local f="$DIR/s3.env"
  if [[ -n "${AWS_ACCESS_KEY_ID:-}" && -n "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
    printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" | write_private "$f"
  elif [[ ! -f "$f" ]]; then
    printf 'AWS_ACCESS_KEY_ID=avtime-%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$(new_secret | cut -c1-12)" "$(new_secret)" | write_private "$f"
  fi
}

start_s3() {
  need weed
  s3_credentials
  mkdir -p "$DIR/s3"
  local pid
  pid="$(set -a; . "$DIR/s3.env"; set +a
    launch s3 "$BIN/weed" mini -dir="$DIR/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$S3_PORT" -master.port="${AVTIME_WEED_MASTER_PORT:-9333}" \
      -volume.port="${AVTIME_WEED_VOLUME_PORT:-9340}" -filer.port="${AVTIME_WEED_FILER_PORT:-8888}" \
      -webdav.port="${AVTIME_WEED_WEBDAV_PORT:-7333}" -admin.port="${AVTIME_WEED_ADMIN_PORT:-23646}" \
      -debug.port="${AVTIME_WEED_DEBUG_PORT:-6060}" -s3.debug.port="${AVTIME_WEED_DEBUG_PORT:-6060}" \
      -s3.port.iceberg=0 -s3.port.lance=0 -bucket="${AVTIME_S3_BUCKETS:-avtime}")"
  wait_http "http://127.0.0.1:$S3_PORT" 90 "$pid" || die "S3 did not start; see $DIR/logs/s3.log"
  log "S3 (SeaweedFS) on http://127.0.0.1:$S3_PORT (pid $pid)"
}

start_mlflow() {
  need mlflow
  mkdir -p "$DIR/mlflow"
  local pid
  pid="$(launch mlflow "$BIN/mlflow" server \
    --backend-store-uri "sqlite:///$DIR/mlflow/mlflow.db" \
    --artifacts-destination "$DIR/mlflow/artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --allowed-hosts "$MLFLOW_ALLOWED_HOSTS")"
  wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 180 "$pid" \
    || die "MLflow did not start; see $DIR/logs/mlflow.log"
  log "MLflow on http://127.0.0.1:$MLFLOW_PORT (pid $pid)"
}

start_ray() {
  need ray
  [[ -f "$DIR/ray_auth_token" ]] || new_secret | write_private "$DIR/ray_auth_token"
  local pid extra
  read -r -a extra <<< "${AVTIME_RAY_EXTRA_ARGS:-}"
  # PATH: jobs run `avtime` from the head's environment. worker_niceness 0 (Ray's default: 15):
  # the Train worker runs like a plain process; sampling tasks drop to data.stream.nice (19).
  pid="$(RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat "$DIR/ray_auth_token")" \
    RAY_USAGE_STATS_ENABLED=0 RAY_worker_niceness=0 PATH="$BIN:$PATH" \
    launch ray "$BIN/ray" start --head --block --node-ip-address=127.0.0.1 \
      --port="$RAY_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
      --ray-client-server-port="$CLIENT_PORT" --num-cpus="$RAY_CPUS" \
      --temp-dir="$RAY_TMP" --disable-usage-stats "${extra[@]}")"
  wait_http "http://127.0.0.1:$DASH_PORT/api/version" 180 "$pid" \
    || die "the Ray head did not start; see $DIR/logs/ray.log"
  log "Ray head: dashboard http://127.0.0.1:$DASH_PORT, GCS 127.0.0.1:$RAY_PORT (pid $pid)"
}

group_alive() {  # group_alive PGID: true while a live (non-zombie) process is in the group
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

stop_one() {  # stop_one NAME: TERM its process group, then KILL what is left after 15 s
  local name="$1" pid
  pid="$(pid_of "$name")"
  if [[ -z "$pid" ]]; then rm -f "$DIR/pids/$name.pid"; log "$name: not running"; return; fi
  [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] \
    || die "$name: pid $pid is not the leader of its own process group; not stopping it"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 30); do
    group_alive "$pid" || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  for _ in $(seq 20); do group_alive "$pid" || break; sleep 0.25; done
  rm -f "$DIR/pids/$name.pid"
  log "$name: stopped (process group $pid)"
}

print_env() {
  local up; up="$(components_up)"
  echo "# avtime local stack ($DIR)"
  if [[ " $up " == *" s3 "* ]]; then
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_DEFAULT_REGION=us-east-1"
    echo "set -a; . '$DIR/s3.env'; set +a  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"
  fi
  if [[ " $up " == *" mlflow "* ]]; then
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
  fi
  if [[ " $up " == *" ray "* ]]; then
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASH_PORT"
    echo "export RAY_AUTH_TOKEN=\"\$(cat '$DIR/ray_auth_token')\""
  fi
}

components_up() {
  local out=()
  for c in "${ALL[@]}"; do [[ -n "$(pid_of "$c")" ]] && out+=("$c"); done
  echo "${out[*]:-}"
}

status() {
  local code=0
  for c in "${ALL[@]}"; do
    local pid; pid="$(pid_of "$c")"
    if [[ -n "$pid" ]]; then echo "$c: running (pid $pid)"; else echo "$c: stopped"; code=3; fi
  done
  return "$code"
}

main() {
  local cmd="${1:-}"; shift || true
  # Check every argument before touching anything: a usage error starts, stops, creates and
  # prints (on stdout) nothing, so `eval "$(local_stack.sh start typo)"` evaluates nothing.
  local chosen=()
  case "$cmd" in
    start|stop)
      chosen=("$@")
      [[ ${#chosen[@]} -gt 0 ]] || chosen=("${ALL[@]}")
      for c in "${chosen[@]}"; do
        [[ " ${ALL[*]} " == *" $c "* ]] \
          || usage_error "unknown component '$c' (choose from: ${ALL[*]})"
      done ;;
    status|env) [[ $# -eq 0 ]] || usage_error "'$cmd' takes no arguments (got: $*)" ;;
    -h|--help|help) usage 2>&1; exit 0 ;;
    "") usage_error "no command" ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
  mkdir -p "$DIR"; chmod 700 "$DIR"
  case "$cmd" in
    start)
      for c in "${chosen[@]}"; do
        if [[ -n "$(pid_of "$c")" ]]; then log "$c: already running"; else "start_$c"; fi
      done
      print_env ;;
    stop)
      for ((i = ${#chosen[@]} - 1; i >= 0; i--)); do stop_one "${chosen[i]}"; done ;;
    status) status ;;
    env) print_env ;;
  esac
}

main "$@"
