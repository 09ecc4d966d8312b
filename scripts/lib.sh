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
