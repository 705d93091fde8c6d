#!/usr/bin/env bash
# The local infrastructure `dapr init` would start in Docker, run as plain processes on loopback:
#   postgres   55432  the workflow's state (actor state store), fsync on, data in .run/data/postgres
#   redis      6379   the agent's entries, registry and approvals, and pub/sub; AOF on, data in .run/data/redis
#   placement  50005  actor placement (workflows run on actors)
#   scheduler  50006  workflow timers and reminders, data in .run/data/scheduler
#   zipkin     9411   traces
#   model      58000  the local model, llama.cpp's OpenAI-compatible server (config/local-model.env), when
#                     `make setup` installed it (it does unless OPENAI_API_KEY was set)
# Redis, placement, scheduler and Zipkin sit on the ports `dapr init` gives them. Where one already
# answers there (a `dapr init` of yours, say), `up` uses it instead of starting one; with OWN_STACK=1
# it starts all its own, and says which port to free. PostgreSQL and the model are always the project's own.
# Usage: [OWN_STACK=1] scripts/stack.sh up|down|status
# Logs: .run/logs/<service>.log. `down` stops only the processes `up` started, by their pid files.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../versions.env
source versions.env
# shellcheck source=../config/local-model.env
source config/local-model.env

RUN_DIR="$PWD/.run"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
DAPR_BIN="$PWD/.dapr/bin"
POSTGRES_BIN="/usr/lib/postgresql/$POSTGRESQL_MAJOR/bin"
ZIPKIN_JAR="$PWD/.cache/zipkin-server-$ZIPKIN_VERSION-exec.jar"
# PostgreSQL refuses to run as root: as root, its files and process belong to the `postgres` user
# Debian's package creates (setpriv execs, so the pid `up` records is the server's own).
POSTGRES_USER=()
[ "$(id -u)" -ne 0 ] || POSTGRES_USER=(setpriv --reuid postgres --regid postgres --init-groups)
POSTGRES_DATA="$RUN_DIR/data/postgres"
# A checkout that user cannot reach (one in root's home, say) keeps its cluster in a folder of its own
# under /var/lib/postgresql, named for the checkout, and links it from .run/data/postgres.
if [ ${#POSTGRES_USER[@]} -gt 0 ] && ! "${POSTGRES_USER[@]}" test -x "$PWD"; then
  POSTGRES_DATA="/var/lib/postgresql/tiniest-durable-agent-$(sha256sum <<<"$PWD" | cut -c1-12)"
fi
MODEL_DIR="$PWD/.model"
MODEL_FILE="$MODEL_DIR/${LOCAL_MODEL_FILE##*/}"
SERVICES=(postgres redis placement scheduler zipkin model)
cmd=()

port_of() {
  case "$1" in
    # Not 5432: a developer's machine often has a PostgreSQL of its own there.
    postgres) echo 55432 ;;
    redis) echo 6379 ;;
    placement) echo 50005 ;;
    scheduler) echo 50006 ;;
    zipkin) echo 9411 ;;
    model) echo "$LOCAL_MODEL_PORT" ;;
  esac
}

# Health endpoints of placement and scheduler, moved off their default 8080 so apps can have it, to
# where `dapr init` publishes its containers' own.
health_port_of() {
  case "$1" in
    placement) echo 58080 ;;
    scheduler) echo 58081 ;;
  esac
}

# Sets the array `cmd` to the command line that runs service $1.
command_of() {
  case "$1" in
    postgres)
      # Loopback only, no Unix socket; fsync stays on (PostgreSQL's default): a step Dapr was told
      # is saved must survive a power cut, as it would in production.
      cmd=("$POSTGRES_BIN/postgres" -D "$POSTGRES_DATA" -c listen_addresses=127.0.0.1 -c port=55432
        -c unix_socket_directories= -c fsync=on)
      ;;
    redis)
      cmd=(redis-server --port 6379 --bind 127.0.0.1 --dir "$RUN_DIR/data/redis" \
        --appendonly yes --appendfsync everysec --save "")
      ;;
    placement)
      cmd=("$DAPR_BIN/placement" --listen-address 127.0.0.1 --port 50005
        --healthz-listen-address 127.0.0.1 --healthz-port 58080
        --metrics-listen-address 127.0.0.1 --metrics-port 59090 --log-level warn)
      ;;
    scheduler)
      cmd=("$DAPR_BIN/scheduler" --listen-address 127.0.0.1 --port 50006
        --healthz-listen-address 127.0.0.1 --healthz-port 58081
        --metrics-listen-address 127.0.0.1 --metrics-port 59091 --log-level warn
        --etcd-data-dir "$RUN_DIR/data/scheduler"
        --etcd-client-listen-address 127.0.0.1
        --override-broadcast-host-port 127.0.0.1:50006)
      ;;
    zipkin)
      # In memory, the newest 50,000 spans (about 2,500 traced runs); Zipkin's default of 500,000
      # outgrows this heap under `make bench`, and Zipkin then stops answering.
      cmd=(java -Xms64m -Xmx512m -jar "$ZIPKIN_JAR" --zipkin.storage.mem.max-spans=50000
        "--armeria.ports[0].ip=127.0.0.1" "--armeria.ports[0].port=9411" "--armeria.ports[0].protocols[0]=http")
      ;;
    model)
      # A context of 2048 tokens (the server's default, said here): a run's prompt is about 150.
      # chatml-function-calling: SmolLM2 speaks ChatML, and with this format the server answers a
      # request that offers tools with OpenAI's tool_calls (the tool agent's), by a grammar.
      cmd=("$MODEL_DIR/venv/bin/python" -m llama_cpp.server --model "$MODEL_FILE" --model_alias "$LOCAL_MODEL_NAME"
        --host 127.0.0.1 --port "$LOCAL_MODEL_PORT" --n_ctx 2048 --chat_format chatml-function-calling)
      ;;
  esac
}

# Fails, naming the fix, when the program that runs service $1 is not installed.
check_installed() {
  command_of "$1"
  local needed="${cmd[0]}"
  case "$1" in
    zipkin) needed=$ZIPKIN_JAR ;;
    model) [ -x "${cmd[0]}" ] && needed=$MODEL_FILE ;;
  esac
  if [ ! -e "$needed" ] && ! command -v "$needed" >/dev/null; then
    if [ "$1" = model ]; then
      echo "stack: the local model is not installed ($needed is missing), and a run without OPENAI_API_KEY" >&2
      echo "       needs it: run \`OPENAI_API_KEY= make setup\`" >&2
    else
      echo "stack: $1 is not installed ($needed is missing); run \`make setup\`" >&2
    fi
    exit 1
  fi
}

is_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# What `up` asks of a server it finds on the port of a service `dapr init` also runs.
health_check_of() {
  case "$1" in
    redis) echo "PING, without a password, answered PONG on 6379" ;;
    placement | scheduler) echo "GET /healthz on $(health_port_of "$1")" ;;
    zipkin) echo "GET /health on 9411" ;;
  esac
}

# Each check gives up after 5 s: what holds a port may take a connection and never answer.
healthy() {
  case "$1" in
    postgres) "$POSTGRES_BIN/pg_isready" -q -t 5 -h 127.0.0.1 -p 55432 ;;
    redis) [ "$(timeout 5 redis-cli -p 6379 ping 2>/dev/null)" = PONG ] ;;
    placement | scheduler) curl -fs -m 5 -o /dev/null "http://127.0.0.1:$(health_port_of "$1")/healthz" ;;
    zipkin) curl -fs -m 5 -o /dev/null http://127.0.0.1:9411/health ;;
    model) curl -fs -m 5 -o /dev/null "http://127.0.0.1:$LOCAL_MODEL_PORT/v1/models" ;;
  esac
}

# The pid of a service `up` started and that is still that process; empty otherwise.
running_pid() {
  local pid_file="$PID_DIR/$1.pid" pid program
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 0
  command_of "$1"
  # A pid file can outlive its process and the pid be reused: check it still runs our program
  # (a prefix, because redis-server rewrites its process title).
  program=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n 1)
  if [[ "$program" == "${cmd[0]}"* ]]; then
    echo "$pid"
  fi
}

# What `up` does for service $1: "running" (it started it earlier), "reuse" (another server answers
# its health check on its ports, and OWN_STACK is not set), "absent" (the model, not installed, with
# a key set) or "start" (its ports are free). Fails, naming the port to free, otherwise; `up` asks
# this of every service before it starts any.
plan_for() {
  local name=$1 p
  if [ -n "$(running_pid "$name")" ]; then echo running; return; fi
  for p in $(port_of "$name") $(health_port_of "$name"); do
    if is_listening "$p"; then
      if reusable "$name" && healthy "$name"; then echo reuse; return; fi
      port_taken "$name" "$p"
    fi
  done
  # With a key, `make setup` does not build the local model, and nothing needs it.
  if [ "$name" = model ] && [ -n "${OPENAI_API_KEY:-}" ] && [ -z "${OWN_STACK:-}" ] && [ ! -e "$MODEL_FILE" ]; then
    echo absent
    return
  fi
  check_installed "$name"
  echo start
}

start() {
  local name=$1 plan=$2 port started=$SECONDS pid
  port=$(port_of "$name")
  case "$plan" in
    running)
      echo "  $name: already running (pid $(running_pid "$name"), port $port)"
      return
      ;;
    absent)
      echo "  $name: not installed, and not needed: OPENAI_API_KEY is set"
      return
      ;;
    reuse)
      echo "  $name: reusing the one already answering on 127.0.0.1:$port (not started here; \`make down\` leaves it)"
      return
      ;;
  esac
  mkdir -p "$LOG_DIR" "$PID_DIR" "$RUN_DIR/data/redis" "$RUN_DIR/data/scheduler"
  local run_as=()
  if [ "$name" = postgres ]; then
    init_postgres
    run_as=("${POSTGRES_USER[@]}")
  fi
  command_of "$name"
  nohup "${run_as[@]}" "${cmd[@]}" >"$LOG_DIR/$name.log" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_DIR/$name.pid"
  until healthy "$name"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOG_DIR/$name.log" >&2
      echo "stack: $name exited while starting; log: $LOG_DIR/$name.log" >&2
      exit 1
    fi
    if [ $((SECONDS - started)) -ge 120 ]; then
      echo "stack: $name did not become healthy in 120s; log: $LOG_DIR/$name.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  [ "$name" != postgres ] || create_database
  echo "  $name: up on 127.0.0.1:$port (pid $pid, $((SECONDS - started))s)"
}

# The services `dapr init` also runs, which `up` uses in place of its own unless OWN_STACK is set.
from_dapr_init() {
  case "$1" in redis | placement | scheduler | zipkin) return 0 ;; *) return 1 ;; esac
}

reusable() {
  [ -z "${OWN_STACK:-}" ] && from_dapr_init "$1"
}

port_taken() {
  local name=$1 port=$2
  if ! from_dapr_init "$name"; then
    echo "stack: port $port, which $name needs, is already taken by another process." >&2
    echo "       Stop it (\`ss -ltnp 'sport = :$port'\` shows which), then run \`make up\` again." >&2
  elif [ -n "${OWN_STACK:-}" ]; then
    echo "stack: port $port, which $name needs, is taken. With OWN_STACK=1 (as \`make test\` sets it: its stories" >&2
    echo "       stop and kill each service) the project starts its own of each. Free the port (\`ss -ltnp" >&2
    echo "       'sport = :$port'\` shows what holds it; \`dapr init\`'s containers stop with \`docker stop" >&2
    echo "       dapr_redis dapr_placement dapr_scheduler dapr_zipkin\`), then run it again." >&2
  else
    echo "stack: port $port, which $name needs, is taken, and what holds it fails $name's health check" >&2
    echo "       ($(health_check_of "$name")). Stop it (\`ss -ltnp 'sport = :$port'\` shows which), then run" >&2
    echo "       \`make up\` again." >&2
  fi
  exit 1
}

# A new cluster in $POSTGRES_DATA, once. Local connections need no password (trust), as Redis's
# do: only this machine's loopback reaches it.
init_postgres() {
  local data="$POSTGRES_DATA"
  [ "$data" = "$RUN_DIR/data/postgres" ] || ln -sfn "$data" "$RUN_DIR/data/postgres"
  [ -f "$data/PG_VERSION" ] && return
  mkdir -p "$data"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$data"
  chmod 0700 "$data"
  ("${POSTGRES_USER[@]}" "$POSTGRES_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale \
    --no-instructions) >"$LOG_DIR/postgres-initdb.log" 2>&1 || {
    tail -n 20 "$LOG_DIR/postgres-initdb.log" >&2
    echo "stack: initdb failed; log: $LOG_DIR/postgres-initdb.log" >&2
    exit 1
  }
}

# The database resources/workflow-state.yaml names; Dapr creates its tables in it on first use.
create_database() {
  local psql=("$POSTGRES_BIN/psql" -h 127.0.0.1 -p 55432 -U postgres -qAt)
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'dapr'")" ]; then
    "${psql[@]}" -c "CREATE DATABASE dapr" >/dev/null
  fi
}

stop() {
  local name=$1 pid signal=TERM
  pid=$(running_pid "$name")
  rm -f "$PID_DIR/$name.pid"
  [ -n "$pid" ] || return 0
  # PostgreSQL's SIGTERM waits for every client to leave; SIGINT rolls them back and stops now.
  [ "$name" != postgres ] || signal=INT
  kill "-$signal" "$pid" 2>/dev/null || true  # it may have exited since running_pid looked
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { echo "  $name: stopped (pid $pid)"; return; }
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  echo "  $name: killed after 10s (pid $pid)"
}

status() {
  local name pid state=0
  for name in "${SERVICES[@]}"; do
    pid=$(running_pid "$name")
    if [ -n "$pid" ] && healthy "$name"; then
      echo "  $name: healthy on 127.0.0.1:$(port_of "$name") (pid $pid)"
    elif [ -n "$pid" ]; then
      echo "  $name: running but not answering (pid $pid, log $LOG_DIR/$name.log)"
      state=1
    elif from_dapr_init "$name" && healthy "$name"; then
      echo "  $name: healthy on 127.0.0.1:$(port_of "$name"), not started here (reused)"
    else
      echo "  $name: not running"
      state=1
    fi
  done
  return "$state"
}

case "${1:-}" in
  up)
    declare -A plans
    for name in "${SERVICES[@]}"; do plans[$name]=$(plan_for "$name") || exit 1; done
    echo "Starting the local stack (logs in $LOG_DIR):"
    for name in "${SERVICES[@]}"; do start "$name" "${plans[$name]}"; done
    ;;
  down)
    for name in model zipkin scheduler placement redis postgres; do stop "$name"; done
    ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
