#!/usr/bin/env bash
# Throughput and latency of Redis directly, through respguard (guards off, and every guard
# on), through haproxy in TCP mode and through twemproxy (nutcracker), measured with
# redis-benchmark in one interleaved run so every target sees the same machine noise.
# Prints markdown tables with each result as a ratio of direct Redis, the goals checked row
# by row, and the one-client latency without pipelining.
#
#   scripts/bench.sh                                   # every row, 3 rounds (about 55 min)
#   ROUNDS=1 TESTS=SET CLIENT_COUNTS=50 SIZES=100 scripts/bench.sh   # a quick look
#   TARGETS="direct respguard respguard+all" scripts/bench.sh         # some targets only
#   LATENCY_ONLY=1 ROUNDS=5 scripts/bench.sh                         # the one-client table only
#
# Each cell is the median over ROUNDS; targets run in a rotating order within each round.
# Other respguard configurations to compare (add their names to TARGETS):
# respguard-1thread (one worker thread of the multi-thread runtime), respguard-multithread
# and respguard-percore (each runtime model, one thread per core), respguard-nometrics
# (metrics not recorded), respguard+checks (size and TTL rules checked on every write, none acting),
# respguard+guards (TTL and size guards acting on every key), respguard+pressure (monitor,
# shedding levels and rules, nothing shed), respguard+queue (that plus a queue rule).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-100000}
TESTS=${TESTS:-"SET GET LPUSH HSET"}
PIPELINES=${PIPELINES:-"1 32"}
CLIENT_COUNTS=${CLIENT_COUNTS:-${CLIENTS:-"50 500"}}
SIZES=${SIZES:-"100 16384"}
LATENCY_REQUESTS=${LATENCY_REQUESTS:-100000}  # the one-client rows
LATENCY_ONLY=${LATENCY_ONLY:-0}                # 1: only the one-client table
TARGETS=${TARGETS:-"direct respguard respguard+all haproxy twemproxy"}

missing=()
command -v redis-benchmark >/dev/null || missing+=(redis-server redis-tools)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nutcracker >/dev/null || missing+=(nutcracker)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --quiet
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"

declare -A ports
ports[direct]=$redis_port
wanted() { [[ " $TARGETS " == *" $1 "* ]]; }
if wanted respguard; then start_respguard "ports[respguard]" "$CONF_GUARDS_OFF"; fi
if wanted respguard+all; then start_respguard "ports[respguard+all]" "$CONF_ALL_GUARDS"; fi
if wanted respguard-1thread; then
  start_respguard "ports[respguard-1thread]" "$CONF_GUARDS_OFF
[proxy]
runtime = \"multi-thread\"
worker_threads = 1"
fi
if wanted respguard-multithread; then
  start_respguard "ports[respguard-multithread]" "$CONF_GUARDS_OFF
[proxy]
runtime = \"multi-thread\""
fi
if wanted respguard-percore; then
  start_respguard "ports[respguard-percore]" "$CONF_GUARDS_OFF
[proxy]
runtime = \"per-core\""
fi
if wanted respguard-nometrics; then
  start_respguard "ports[respguard-nometrics]" "$CONF_GUARDS_OFF
[admin]
metrics = false"
fi
if wanted respguard+pressure; then start_respguard "ports[respguard+pressure]" "$CONF_PRESSURE"; fi
if wanted respguard+queue; then start_respguard "ports[respguard+queue]" "$CONF_QUEUE"; fi
if wanted respguard+checks; then
  start_respguard "ports[respguard+checks]" "$CONF_GUARDS_OFF"'
[[guards.size.rules]]
pattern = "*"
max_value = "1MiB"
max_elements = 100000
[[guards.ttl.rules]]
pattern = "never-matches:*"
ttl = "1h"'
fi
if wanted respguard+guards; then
  start_respguard "ports[respguard+guards]" "$CONF_GUARDS_OFF"'
[[guards.size.rules]]
pattern = "*"
max_value = "1MiB"
max_elements = 100000
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"'
fi
if wanted haproxy; then
  ports[haproxy]=$(free_port)
  cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen redis
  bind 127.0.0.1:${ports[haproxy]}
  server redis 127.0.0.1:$redis_port
CFG
  haproxy -f "$work/haproxy.cfg" -db &
  pids+=($!)
  wait_port "${ports[haproxy]}"
fi
if wanted twemproxy; then
  ports[twemproxy]=$(free_port)
  cat > "$work/nutcracker.yml" <<CFG
bench:
  listen: 127.0.0.1:${ports[twemproxy]}
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  server_connections: 1
  servers:
    - 127.0.0.1:$redis_port:1
CFG
  nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" &
  pids+=($!)
  wait_port "${ports[twemproxy]}"
fi
targets=()
for t in $TARGETS; do
  [ -n "${ports[$t]:-}" ] || { echo "unknown target $t" >&2; exit 1; }
  targets+=("$t")
done

# measure TARGET TEST PIPELINE CLIENTS SIZE REQUESTS -> "ops/s p50_ms p99_ms"
# Redis is emptied after each run: LPUSH always pushes onto one list, which would otherwise
# reach tens of GiB over the 16 KiB rows (and make later runs measure a bigger Redis); so
# GET's key is written first, with a value of the row's size.
measure() {
  if [ "$2" = GET ]; then write_get_key "$5"; fi
  redis-benchmark -h 127.0.0.1 -p "${ports[$1]}" -t "$2" -P "$3" -c "$4" -d "$5" -n "$6" --csv 2>/dev/null |
    awk -F'","' 'NR==2 { gsub(/"/, "", $0); split($0, f, ","); print f[2], f[5], f[7] }'
  redis-cli -p "$redis_port" flushall >/dev/null
}

# One row: every target, ROUNDS times in rotating order. Sets med_rps, med_p50, med_p99.
declare -A med_rps med_p50 med_p99
row() {
  local test=$1 pipe=$2 clients=$3 size=$4 requests=$5 round i n t r p50 p99
  declare -A all_rps=() all_p50=() all_p99=()
  n=${#targets[@]}
  for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      t=${targets[$(( (i + round) % n ))]}
      read -r r p50 p99 < <(measure "$t" "$test" "$pipe" "$clients" "$size" "$requests")
      all_rps[$t]+="$r "; all_p50[$t]+="$p50 "; all_p99[$t]+="$p99 "
    done
  done
  for t in "${targets[@]}"; do
    med_rps[$t]=$(tr ' ' '\n' <<<"${all_rps[$t]}" | grep . | median)
    med_p50[$t]=$(tr ' ' '\n' <<<"${all_p50[$t]}" | grep . | median)
    med_p99[$t]=$(tr ' ' '\n' <<<"${all_p99[$t]}" | grep . | median)
  done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# The table over every row, then the goals checked row by row.
matrix() {
  local size clients pipe test t hap twem ok_hap ok_twem goals=()
  echo "| test | pipeline | clients | value | target | ops/s | vs direct | p50 ms | vs direct | p99 ms | vs direct |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for size in $SIZES; do
    for clients in $CLIENT_COUNTS; do
      for pipe in $PIPELINES; do
        for test in $TESTS; do
          row "$test" "$pipe" "$clients" "$size" "$REQUESTS"
          for t in "${targets[@]}"; do
            printf '| %s | %s | %s | %s B | %s | %.0f | %s | %.3f | %s | %.3f | %s |\n' \
              "$test" "$pipe" "$clients" "$size" "$t" "${med_rps[$t]}" \
              "$(ratio "${med_rps[$t]}" "${med_rps[direct]}")" "${med_p50[$t]}" \
              "$(ratio "${med_p50[$t]}" "${med_p50[direct]}")" "${med_p99[$t]}" \
              "$(ratio "${med_p99[$t]}" "${med_p99[direct]}")"
          done
          if wanted respguard+all && wanted haproxy && wanted twemproxy; then
            hap=$(ratio "${med_rps[respguard+all]}" "${med_rps[haproxy]}")
            twem=$(ratio "${med_rps[respguard+all]}" "${med_rps[twemproxy]}")
            ok_hap=$(awk -v r="$hap" 'BEGIN { print (r >= 1.0) ? "yes" : "no" }')
            if [ "$pipe" -gt 1 ]; then
              ok_twem=$(awk -v r="$twem" 'BEGIN { print (r > 1.0) ? "yes" : "no" }')
            else
              ok_twem="(not a goal)"
            fi
            goals+=("| $test | $pipe | $clients | $size B | $hap | $ok_hap | $twem | $ok_twem |")
          fi
        done
      done
    done
  done

  if [ ${#goals[@]} -gt 0 ]; then
    echo
    echo "Goals: respguard with every guard on at or above haproxy in every row, above twemproxy in pipelined rows."
    echo
    echo "| test | pipeline | clients | value | all guards / haproxy | met | all guards / twemproxy | met |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${goals[@]}"
  fi
  echo
}

# One client without pipelining: the latency a request adds.
latency_table() {
  local test t
  echo "One client, no pipelining, 100 B values ($LATENCY_REQUESTS requests): goal p99 within 50 µs of direct."
  echo
  echo "| test | target | p50 µs | p99 µs | p99 - direct µs |"
  echo "|---|---|---|---|---|"
  for test in $TESTS; do
    row "$test" 1 1 100 "$LATENCY_REQUESTS"
    for t in "${targets[@]}"; do
      awk -v t="$test" -v n="$t" -v a="${med_p50[$t]}" -v b="${med_p99[$t]}" -v d="${med_p99[direct]}" \
        'BEGIN { printf "| %s | %s | %.0f | %.0f | %+.0f |\n", t, n, a * 1000, b * 1000, (b - d) * 1000 }'
    done
  done
}

[ "$LATENCY_ONLY" = 1 ] || matrix
latency_table

echo
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f3); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(nutcracker -V 2>&1 | head -1)"
echo "command: ROUNDS=$ROUNDS REQUESTS=$REQUESTS LATENCY_REQUESTS=$LATENCY_REQUESTS LATENCY_ONLY=$LATENCY_ONLY TESTS=\"$TESTS\" PIPELINES=\"$PIPELINES\" CLIENT_COUNTS=\"$CLIENT_COUNTS\" SIZES=\"$SIZES\" TARGETS=\"$TARGETS\" scripts/bench.sh"
