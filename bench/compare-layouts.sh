#!/usr/bin/env bash
# Layout v1 against layout v2 (docs/redis-layout-v2.md) on this machine, one after the other,
# each on a fresh redis-server (port 6390) with two callgate replicas on it (A 8090/50091,
# B 8091/50092) and the floor (50061): the population, checks at 64 in flight and batches of
# 1,000 beside the floor, the three webhook ingestion cases of bench/run-all.sh, propagation,
# and Redis's CPU for the whole run (INFO commandstats, `used_cpu_*`).
#
#   cargo build --release -p callgate -p callgate-bench
#   bench/compare-layouts.sh OUT_FILE
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/compare-layouts.sh OUT_FILE}
cg=target/release/callgate
B=target/release/callgate-bench
: >"$out"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pids=()
  redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
export CALLGATE_TOKEN=demo-key
common=(RUST_LOG=warn CALLGATE_WEBHOOK_TOKENS=bench CALLGATE_API_CLIENTS_FILE=demo/api-clients.toml)
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
run() { local label=$1; shift; echo "## $label: callgate-bench $*" | tee -a "$out"; "$B" "$@" 2>&1 | tee -a "$out"; }

"$B" floor --addr 127.0.0.1:50061 2>/dev/null & floor=$!
for layout in v1 v2; do
  echo "# layout $layout" | tee -a "$out"
  redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
  for r in "8090 50091" "8091 50092"; do
    set -- $r
    env "${common[@]}" CALLGATE_REDIS_URL=redis://127.0.0.1:6390 CALLGATE_REDIS_LAYOUT=$layout \
      "$cg" serve --http-addr 127.0.0.1:$1 --grpc-addr 127.0.0.1:$2 & pids+=($!)
    # The second replica starts once the first has marked the store's layout.
    wait_port $1; wait_port $2
  done
  wait_port 50061
  "$B" preload --http-addr 127.0.0.1:8090 --token bench --population 100000 | tee -a "$out"
  run "$layout check c64" check --addr 127.0.0.1:50091 --floor-addr 127.0.0.1:50061 \
    --population 100000 --concurrency 64 --connections 2 --duration 10
  run "$layout batch1000 c1" batch --addr 127.0.0.1:50091 --floor-addr 127.0.0.1:50061 \
    --population 100000 --batch-size 1000 --concurrency 1 --connections 1 --duration 10
  redis-cli -p 6390 config resetstat >/dev/null
  run "$layout ingest c32" ingest --http-addr 127.0.0.1:8090 --token bench --concurrency 32 --duration 10
  run "$layout ingest c32, pairs with a history, same replica" ingest --http-addr 127.0.0.1:8090 \
    --token bench --concurrency 32 --duration 10 --pairs 20000
  run "$layout ingest c32, pairs with a history, other replica" ingest --http-addr 127.0.0.1:8091 \
    --token bench --concurrency 32 --duration 8 --pairs 100000
  echo "## $layout: Redis CPU of the three ingest runs (INFO commandstats, evalsha)" | tee -a "$out"
  redis-cli -p 6390 info commandstats | grep -E "cmdstat_(evalsha|evalsha_ro)" | sed 's/,rejected.*//' | tee -a "$out"
  run "$layout propagation" propagation --http-addr 127.0.0.1:8090 --addr 127.0.0.1:50091 --token bench --requests 1000
  cleanup
  sleep 1
done
kill $floor 2>/dev/null || true
