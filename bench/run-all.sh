#!/usr/bin/env bash
# Takes every figure of BENCHMARKS.md's Results table in one run, against release builds on
# this machine: the embedded store and Redis, each side by side with the do-nothing floor.
#
#   bench/run-all.sh OUT_DIR [CALLGATE_BINARY]
#
# Starts its own redis-server instances (free ports 6390, 6395), two callgate replicas on the
# Redis one (A on 8090/50091, B on 8091/50092), one on the embedded store (8093/50093) and the
# floor (50061); stops them all on exit. Every line the bench prints goes to OUT_DIR/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/run-all.sh OUT_DIR [CALLGATE_BINARY]}
cg=${2:-target/release/callgate}
B=target/release/callgate-bench
mkdir -p "$out"
: >"$out/results.txt"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
  redis-cli -p 6395 shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

export CALLGATE_TOKEN=demo-key
common=(RUST_LOG=warn CALLGATE_WEBHOOK_TOKENS=bench CALLGATE_API_CLIENTS_FILE=demo/api-clients.toml)

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
run() { # label, then the bench arguments
  local label=$1; shift
  echo "## $label: callgate-bench $*" | tee -a "$out/results.txt"
  "$B" "$@" 2>&1 | tee -a "$out/results.txt"
}

redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
env "${common[@]}" CALLGATE_REDIS_URL=redis://127.0.0.1:6390 \
  "$cg" serve --http-addr 127.0.0.1:8090 --grpc-addr 127.0.0.1:50091 & pids+=($!); A=$!
env "${common[@]}" CALLGATE_REDIS_URL=redis://127.0.0.1:6390 \
  "$cg" serve --http-addr 127.0.0.1:8091 --grpc-addr 127.0.0.1:50092 & pids+=($!)
env "${common[@]}" "$cg" serve --http-addr 127.0.0.1:8093 --grpc-addr 127.0.0.1:50093 & pids+=($!); M=$!
"$B" floor --addr 127.0.0.1:50061 2>/dev/null & pids+=($!)
for p in 8090 8091 8093 50091 50092 50093 50061; do wait_port $p; done

# The population on both stores (the embedded store's is its own copy).
"$B" preload --http-addr 127.0.0.1:8090 --token bench --population 100000 | tee -a "$out/results.txt"
"$B" preload --http-addr 127.0.0.1:8093 --token bench --population 100000 | tee -a "$out/results.txt"

for store in redis:50091 memory:50093; do
  name=${store%%:*}; port=${store##*:}
  run "$name check c64" check --addr 127.0.0.1:$port --floor-addr 127.0.0.1:50061 --population 100000 \
    --concurrency 64 --connections 2 --duration 10 --rounds 3
  run "$name check c1" check --addr 127.0.0.1:$port --floor-addr 127.0.0.1:50061 --population 100000 \
    --concurrency 1 --connections 1 --duration 10
  run "$name batch1000 c1" batch --addr 127.0.0.1:$port --floor-addr 127.0.0.1:50061 --population 100000 \
    --batch-size 1000 --concurrency 1 --connections 1 --duration 10
done
# Like for like with the floor, which always sends evidence: callgate asked for it too.
if "$cg" --help >/dev/null 2>&1 && "$B" check --help | grep -q include-evidence; then
  run "redis check c64 with evidence" check --addr 127.0.0.1:50091 --floor-addr 127.0.0.1:50061 \
    --population 100000 --concurrency 64 --connections 2 --duration 10 --rounds 3 --include-evidence
  run "redis batch1000 c1 with evidence" batch --addr 127.0.0.1:50091 --floor-addr 127.0.0.1:50061 \
    --population 100000 --batch-size 1000 --concurrency 1 --connections 1 --duration 10 --include-evidence
fi

run "redis ingest c32" ingest --http-addr 127.0.0.1:8090 --token bench --concurrency 32 --duration 10
# Answers for pairs that already have a history (pairs the line above wrote): on the replica
# that wrote them (its tip memo guesses right), then on the other one (every guess wrong: each
# webhook is refused once with the real tip, then recorded).
if "$B" ingest --help | grep -q -- --pairs; then
  run "redis ingest c32, pairs with a history, same replica" ingest --http-addr 127.0.0.1:8090 \
    --token bench --concurrency 32 --duration 10 --pairs 20000
  run "redis ingest c32, pairs with a history, other replica" ingest --http-addr 127.0.0.1:8091 \
    --token bench --concurrency 32 --duration 8 --pairs 100000
fi
run "redis propagation" propagation --http-addr 127.0.0.1:8090 --addr 127.0.0.1:50091 --token bench --requests 1000

# The staleness bound under load: denials on A, checks on B, while 32 checkers load B.
"$B" check --addr 127.0.0.1:50092 --population 100000 --concurrency 32 --connections 2 \
  --duration 30 >"$out/staleness-load.txt" 2>&1 & load=$!
run "redis staleness under load" staleness --http-addr 127.0.0.1:8090 --addr 127.0.0.1:50092 \
  --token bench --concurrency 4 --requests 400 --duration 25
wait $load || true
cat "$out/staleness-load.txt" >>"$out/results.txt"

for pid in $A $M; do
  echo "## RSS of pid $pid: $(grep -E 'VmRSS|VmHWM' /proc/$pid/status | tr -s ' ' | tr '\n' ' ')" | tee -a "$out/results.txt"
done

redis-server --port 6395 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
run "redis memory" redis-memory --redis-url redis://127.0.0.1:6395 --consents 200000
# The same consents on layout v1 (a store written before v2 keeps it).
redis-cli -p 6395 flushall >/dev/null
run "redis memory, layout v1" redis-memory --layout v1 --redis-url redis://127.0.0.1:6395 --consents 200000
# The same consents in the most compact layout known (not the store's): the memory floor.
redis-cli -p 6395 flushall >/dev/null
run "redis memory floor" redis-memory-floor --redis-url redis://127.0.0.1:6395 --consents 200000
# At the issue's own scale (1,000,000 consents: every per-business sorted set is past 128
# members), the store and the floor with sorted-set and with packed indexes, native expiry kept.
redis-cli -p 6395 flushall >/dev/null
run "redis memory, 1M" redis-memory --redis-url redis://127.0.0.1:6395 --consents 1000000
for indexes in sorted-sets packed; do
  redis-cli -p 6395 flushall >/dev/null
  run "redis memory floor, 1M, $indexes indexes" redis-memory-floor \
    --redis-url redis://127.0.0.1:6395 --consents 1000000 --native-expiry --indexes "$indexes"
done
