#!/bin/bash
# Usage: bench/compare-record.sh N [N...]   (e.g. 200000 1000000; release builds first:
#   cargo build --release -p callgate-bench). Starts and stops its own redis-server on $PORT.
# The store on layout v1 (record.lua: redis-memory --layout v1), on layout v2 (the default) and
# the packed layout's prototype, on the same mix:
# Redis CPU per script call, and bytes per consent without the event log measured exactly
# (used_memory after deleting the event log's streams).
cd "$(dirname "$0")/.."
B=target/release/callgate-bench
P=${PORT:-6397}
um() { redis-cli -p $P info memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r'; }
for N in "$@"; do
  for tool in "redis-memory --layout v1" "redis-memory --layout v2" redis-record-prototype; do
    redis-server --port $P --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
    sleep 0.5
    before=$(um)
    echo "## callgate-bench $tool --redis-url redis://127.0.0.1:$P --consents $N"
    $B $tool --redis-url redis://127.0.0.1:$P --consents $N 2>&1 | grep -E "recorded|CPU|bytes per consent|failed"
    redis-cli -p $P info commandstats | grep cmdstat_evalsha | sed 's/,rejected.*//'
    for k in $(redis-cli -p $P --scan --pattern '*}:e') $(redis-cli -p $P --scan --pattern '*}:trimmed'); do redis-cli -p $P del "$k" >/dev/null; done
    after=$(um)
    echo "exact without the event log: $(( (after - before) / N )) B per consent (used_memory $before -> $after after deleting the event log)"
    redis-cli -p $P shutdown nosave >/dev/null 2>&1
    sleep 0.5
  done
done
