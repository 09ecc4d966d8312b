# Shared helpers for the EdgeFleet scripts: locate or start the services and tools tests need.
# Sourced, not executed. Everything here is idempotent and safe on a fresh Debian machine.

EDGEFLEET_CACHE=${EDGEFLEET_CACHE:-$HOME/.cache/edgefleet}
export EDGEFLEET_MODELS=${EDGEFLEET_MODELS:-$EDGEFLEET_CACHE/models}
export EDGEFLEET_TOOLS=${EDGEFLEET_TOOLS:-$EDGEFLEET_CACHE/tools}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log() { printf '\n==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local host=$1 port=$2 tries=${3:-50}
  for _ in $(seq "$tries"); do port_open "$host" "$port" && return 0; sleep 0.2; done
  return 1
}

ensure_postgres() {
  if port_open 127.0.0.1 5432; then return 0; fi
  log "starting PostgreSQL"
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 127.0.0.1 5432 || { echo "PostgreSQL did not start" >&2; return 1; }
}

ensure_mosquitto() {
  if port_open 127.0.0.1 1883; then return 0; fi
  log "starting Mosquitto"
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
  /usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 127.0.0.1 1883 || { echo "Mosquitto did not start" >&2; return 1; }
}

ensure_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then return 0; fi
  log "installing Prometheus (Debian package)"
  apt_install prometheus
  # The package's service would bind 9090 for the whole machine; tests start their own.
  (service prometheus stop || pkill -x prometheus || true) >/dev/null 2>&1
}

ensure_k8s_tools() {
  bash tests/tools/install-k8s-tools.sh >/dev/null
  export PATH="$EDGEFLEET_TOOLS/bin:$PATH"
}

# The agent's `llm` feature builds llama.cpp from source (llama-cpp-sys-2): CMake, a C/C++
# compiler and libclang for bindgen.
ensure_llama_build_deps() {
  if command -v cmake >/dev/null && command -v clang >/dev/null \
     && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then return 0; fi
  log "installing cmake, clang and libclang-dev (to build llama.cpp)"
  apt_install cmake clang libclang-dev
}

# The fleet page's browser test: Debian's Chromium, driven by Playwright's Python client in
# its own venv. Playwright's own browser download is never used (no such host is reachable):
# the test launches /usr/bin/chromium.
ensure_browser() {
  if ! command -v chromium >/dev/null; then
    log "installing chromium (Debian package) for the fleet page's browser test"
    apt_install chromium
  fi
  local venv="$EDGEFLEET_TOOLS/browser-venv"
  if ! "$venv/bin/python" -c "import playwright" 2>/dev/null; then
    log "installing Playwright's Python client into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "playwright==1.65.2"
  fi
  export EDGEFLEET_BROWSER_PYTHON="$venv/bin/python"
}

ensure_models() {
  bash tests/tools/fetch-models.sh
}

# An OCI registry for the model-pull tests: Debian's docker-registry (Distribution 2.8), two
# instances run in the background (not through systemd), both with blob deletion on (a test
# deletes a blob to play a missing one):
#   127.0.0.1:5000  anonymous
#   127.0.0.1:5001  basic auth (htpasswd, bcrypt): user edgefleet, password edgefleet-pass
# Configs, storage, logs and pid files live in $EDGEFLEET_CACHE/registry/. An instance that
# already answers /v2/ as expected (200, resp. 401) is left alone. Exports nothing.
# It also calls ensure_oras, so one call readies tests/tools/oci-push.py too.
EDGEFLEET_REGISTRY_USER=edgefleet
EDGEFLEET_REGISTRY_PASS=edgefleet-pass

registry_status() {  # HTTP status of GET /v2/ on 127.0.0.1:$1, 000 when nothing answers
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/v2/" || true
}

# start_registry NAME PORT EXPECTED_STATUS [htpasswd file]
start_registry() {
  local name=$1 port=$2 want=$3 htpasswd=${4:-} dir="$EDGEFLEET_CACHE/registry" status
  status=$(registry_status "$port")
  [ "$status" = "$want" ] && return 0
  if [ "$status" != 000 ]; then
    echo "port $port answers /v2/ with HTTP $status, not $want: something else holds it" >&2
    return 1
  fi
  log "starting the $name OCI registry on 127.0.0.1:$port"
  mkdir -p "$dir/storage-$name"
  {
    printf 'version: 0.1\nlog:\n  level: info\n  formatter: text\n'
    printf 'storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n' \
      "$dir/storage-$name"
    printf 'http:\n  addr: 127.0.0.1:%s\n  secret: edgefleet-test-registry\n' "$port"
    if [ -n "$htpasswd" ]; then
      printf 'auth:\n  htpasswd:\n    realm: edgefleet\n    path: %s\n' "$htpasswd"
    fi
  } >"$dir/$name.yml"
  # Its own session, like a daemon: a Ctrl-C or a kill of the caller's process group spares it.
  # Started from a subshell, which has no job control: so setsid needn't fork and $! (kept in
  # $name.pid) is the registry itself.
  ( setsid docker-registry serve "$dir/$name.yml" >>"$dir/$name.log" 2>&1 </dev/null &
    echo $! >"$dir/$name.pid" )
  local pid deadline=$((SECONDS + 15))
  pid=$(cat "$dir/$name.pid")
  while [ "$SECONDS" -lt "$deadline" ]; do
    status=$(registry_status "$port")
    [ "$status" = "$want" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  local why="exited"
  if kill -0 "$pid" 2>/dev/null; then
    why="did not answer /v2/ with HTTP $want within 15 s"
    kill "$pid" 2>/dev/null
  fi
  echo "the $name registry for 127.0.0.1:$port $why (last answer: HTTP $status);" \
       "its log, $dir/$name.log, ends with:" >&2
  tail -n 20 "$dir/$name.log" >&2
  return 1
}

ensure_registry() {
  local dir="$EDGEFLEET_CACHE/registry"
  if ! command -v docker-registry >/dev/null || ! command -v htpasswd >/dev/null; then
    log "installing docker-registry and apache2-utils (htpasswd) (Debian packages)"
    apt_install docker-registry apache2-utils
    # Where the package's own service would start, it would hold :5000 with another config.
    (service docker-registry stop || true) >/dev/null 2>&1
  fi
  mkdir -p "$dir"
  if [ ! -s "$dir/htpasswd" ]; then
    htpasswd -Bbn "$EDGEFLEET_REGISTRY_USER" "$EDGEFLEET_REGISTRY_PASS" >"$dir/htpasswd.tmp"
    mv "$dir/htpasswd.tmp" "$dir/htpasswd"
  fi
  start_registry anon 5000 200 || return 1
  start_registry auth 5001 401 "$dir/htpasswd" || return 1
  ensure_oras
}

# tests/tools/oci-push.py (push a file as an OCI artifact; delete a blob) runs on the oras
# package from PyPI, pinned, in its own venv at $EDGEFLEET_TOOLS/oras-venv. The script
# re-executes itself with that venv's python, so callers run it with any python3; nothing
# is exported.
ORAS_VERSION=0.2.43
ensure_oras() {
  local venv="$EDGEFLEET_TOOLS/oras-venv"
  if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("oras"))' \
          2>/dev/null)" = "$ORAS_VERSION" ]; then return 0; fi
  log "installing oras==$ORAS_VERSION (PyPI) into $venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv --clear "$venv"; }
  "$venv/bin/python" -m pip install --quiet "oras==$ORAS_VERSION"
}
