#!/usr/bin/env bash
# Throughput and p99 latency of Redis directly, through respguard, and through haproxy in TCP
# mode (a proxy that only copies bytes), measured with redis-benchmark in one interleaved run
# so every target sees the same machine noise. Prints a markdown table with each result as
# a ratio of direct Redis.
#
#   scripts/bench.sh                 # all rows, 3 rounds
#   ROUNDS=5 REQUESTS=300000 scripts/bench.sh
#
# Each cell is the median over ROUNDS; targets run in a rotating order within each round.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-"SET GET HSET"}
PIPELINES=${PIPELINES:-"1 32"}
SIZES=${SIZES:-"100 16384"}
EXTRA_TARGETS=${EXTRA_TARGETS:-}   # e.g. "respguard-guards:PORT" added by later benchmarks
TARGETS=${TARGETS:-}               # only these targets (names), e.g. "direct respguard respguard+pressure"

need() { command -v "$1" >/dev/null || { echo "bench.sh needs $1 ($2)" >&2; exit 1; }; }
if ! command -v redis-benchmark >/dev/null || ! command -v haproxy >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server redis-tools haproxy >/dev/null
fi
need redis-benchmark "apt-get install redis-tools"
need haproxy "apt-get install haproxy"

cargo build --release --quiet
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"

# No guards at all: the proxy alone (shedding is on by default, so turned off here).
no_guards='
[guards.shed]
soft_enter = 0.0
hard_enter = 0.0'
start_respguard rg_port "$no_guards"
start_respguard rg1_port "$no_guards
[proxy]
worker_threads = 1"
# The same without metrics, to measure what recording them costs (every target above
# records them, scraped or not).
start_respguard nometrics_port "$no_guards
[admin]
metrics = false"
# Memory monitor polling every 250 ms, shedding levels and priority rules configured;
# nothing is shed (Redis has no maxmemory, so the monitor runs against a budget far above
# its use).
pressure_conf='
[monitor]
interval = "250ms"
memory_budget = "64GiB"
[guards.shed]
soft_enter = 0.8
soft_exit = 0.75
hard_enter = 0.9
hard_exit = 0.85
[[guards.shed.rules]]
pattern = "analytics:*"
priority = "low"
[[guards.shed.rules]]
pattern = "session:*"
priority = "critical"'
start_respguard pressure_port "$pressure_conf"
# The same, plus the benchmark's list followed as a queue with a depth limit (LPUSH).
start_respguard queue_port "$pressure_conf"'
[[guards.queue.rules]]
pattern = "mylist"
max_depth = 1000000000'
# The guard engine's own cost, with nothing for Redis to do differently: every write is
# size-checked and matched against a TTL rule, none is refused or rewritten.
start_respguard checks_port "$no_guards"'
[[guards.size.rules]]
pattern = "*"
max_value = "1MiB"
max_elements = 100000
[[guards.ttl.rules]]
pattern = "never-matches:*"
ttl = "1h"'
# The TTL and size guards enforcing on every key: every SET gets PX appended, every HSET a
# hidden PEXPIRE, every write a size check.
start_respguard guarded_port "$no_guards"'
[[guards.size.rules]]
pattern = "*"
max_value = "1MiB"
max_elements = 100000
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"'

hap_port=$(free_port)
cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 2000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen redis
  bind 127.0.0.1:$hap_port
  server redis 127.0.0.1:$redis_port
CFG
haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)
wait_port "$hap_port"

targets=("direct:$redis_port" "respguard:$rg_port" "respguard-1thread:$rg1_port" "respguard-nometrics:$nometrics_port" "respguard+checks:$checks_port" "respguard+guards:$guarded_port" "respguard+pressure:$pressure_port" "respguard+queue:$queue_port" "haproxy:$hap_port")
for t in $EXTRA_TARGETS; do targets+=("$t"); done
if [ -n "$TARGETS" ]; then
  chosen=()
  for t in "${targets[@]}"; do
    for want in $TARGETS; do [ "${t%%:*}" = "$want" ] && chosen+=("$t"); done
  done
  targets=("${chosen[@]}")
fi

# run TARGET_PORT TEST PIPELINE SIZE -> "rps p99_ms"
run() {
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$CLIENTS" -n "$REQUESTS" -P "$3" -d "$4" -t "$2" --csv 2>/dev/null |
    awk -F'","' 'NR==2 { gsub(/"/, "", $0); split($0, f, ","); print f[2], f[7] }'
}


echo "| test | pipeline | value | target | ops/s | vs direct | vs respguard | p99 ms | vs direct |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
  for pipe in $PIPELINES; do
    for test in $TESTS; do
      declare -A rps=() p99=()
      for round in $(seq 1 "$ROUNDS"); do
        n=${#targets[@]}
        for i in $(seq 0 $((n - 1))); do
          t=${targets[$(( (i + round) % n ))]}
          name=${t%%:*}; port=${t##*:}
          read -r r p < <(run "$port" "$test" "$pipe" "$size")
          rps[$name]+="$r "; p99[$name]+="$p "
        done
      done
      base_r=$(tr ' ' '\n' <<<"${rps[direct]}" | grep . | median)
      base_p=$(tr ' ' '\n' <<<"${p99[direct]}" | grep . | median)
      rg_r=$(tr ' ' '\n' <<<"${rps[respguard]}" | grep . | median)
      for t in "${targets[@]}"; do
        name=${t%%:*}
        r=$(tr ' ' '\n' <<<"${rps[$name]}" | grep . | median)
        p=$(tr ' ' '\n' <<<"${p99[$name]}" | grep . | median)
        awk -v t="$test" -v pl="$pipe" -v s="$size" -v n="$name" -v r="$r" -v br="$base_r" -v rr="$rg_r" -v p="$p" -v bp="$base_p" \
          'BEGIN { printf "| %s | %s | %s B | %s | %.0f | %.2f | %.2f | %.3f | %.2f |\n", t, pl, s, n, r, r/br, r/rr, p, p/bp }'
      done
      unset rps p99
    done
  done
done
echo
echo "machine: $(nproc) cores, $(uname -m); $(redis-server --version | cut -d' ' -f3); $(haproxy -v | head -1 | cut -d' ' -f1-3)"
echo "command: ROUNDS=$ROUNDS REQUESTS=$REQUESTS CLIENTS=$CLIENTS scripts/bench.sh"
