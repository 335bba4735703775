#!/usr/bin/env bash
# Throughput and latency of Redis directly, through respguard (guards off, and every guard
# on), through haproxy in TCP mode and through twemproxy (nutcracker), in one interleaved
# run so every target sees the same machine noise. Prints markdown tables with each result
# as a ratio of direct Redis, the goals checked row by row, and the one-client latency
# without pipelining.
#
#   scripts/bench.sh                                   # every row, 3 rounds (about 65 min)
#   ROUNDS=1 TESTS=SET CLIENT_COUNTS=50 SIZES=100 scripts/bench.sh   # a quick look
#   ROUNDS=1 TESTS="SET HSET" PIPELINES="1 32" CLIENT_COUNTS=50 SIZES=100 scripts/bench.sh
#   TARGETS="direct respguard respguard+all haproxy" scripts/bench.sh # some targets only
#   LATENCY_ONLY=1 ROUNDS=5 scripts/bench.sh                         # the one-client table only
#
# The load: redis-benchmark for SET, GET and LPUSH; for HSET, every target is measured by
# examples/pipeline_bench.rs (one tool for the whole row: it spends less CPU per command
# than redis-benchmark, so its numbers are comparable within a row, not across tools).
# SET and HSET write random keys below KEYSPACE (`key:<12 digits>`); GET reads one key,
# LPUSH pushes onto one list (`mylist`), as redis-benchmark does.
#
# TTL anchors. With every guard on (respguard+all), the TTL guard makes Redis store an
# expiry with every SET (PX appended) and every HSET (the HSET and a `PEXPIRE key ttl NX`
# in one script), so those two rows, the "TTL rows", are compared with haproxy+ttl: HAProxy
# carrying the same logical operation with the TTL already in the commands,
# `SET key:<rand> <value> PX 3600000`, and `HSET key:<rand> field <value>` followed by
# `PEXPIRE key:<rand> 3600000 NX` in the same pipeline (direct+ttl: the same, straight to
# Redis). The GET and LPUSH rows of respguard+all are compared with plain haproxy: GET
# writes nothing and the TTL guard leaves LPUSH's list (a job queue) alone. The +ttl targets
# run in the TTL rows only. The guards-off proxy (respguard) is always compared with haproxy.
#
# Goals, checked row by row: respguard, guards off, at or above haproxy's throughput;
# respguard+all at or above its anchor's; respguard+all above twemproxy when pipelined. One
# client, no pipelining: the p50 latency respguard adds to direct Redis at or below what
# haproxy adds (respguard+all in the TTL rows: against haproxy+ttl, both over direct+ttl).
#
# Each cell is the median over ROUNDS; targets run in a rotating order within each round.
# Other respguard configurations to compare (add their names to TARGETS):
# respguard-1thread (one worker thread of the multi-thread runtime), respguard-multithread
# and respguard-percore (each runtime model, one thread per core), respguard-nometrics
# (metrics not recorded), respguard+checks (size and TTL rules checked on every write, none acting),
# respguard+guards (TTL and size guards acting on every key), respguard+pressure (monitor,
# shedding levels and rules, nothing shed), respguard+queue (that plus a queue rule),
# respguard+all-noinsight (every guard, the keyspace insight off; respguard+all keeps it at
# its default sample rate), respguard+all-insight-every (the insight observing every command),
# respguard-mux and respguard-mux+all (guards off, and every guard, with
# upstream.connections = "multiplexed"), respguard-mux-percore and respguard-mux+all-percore
# (the same with proxy.runtime = "per-core": shared connections per serving thread),
# respguard-mux-1thread and respguard-mux+all-1thread (multiplexed, one worker thread).
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
KEYSPACE=${KEYSPACE:-100000}                   # SET and HSET keys: key:<random below this>
TARGETS=${TARGETS:-"direct direct+ttl respguard respguard+all haproxy haproxy+ttl twemproxy"}
TTL_TESTS="SET HSET"   # the rows where respguard+all's TTL guard adds an expiry
TTL_MS=3600000         # the TTL of CONF_ALL_GUARDS (1h), as the +ttl targets send it

missing=()
command -v redis-benchmark >/dev/null || missing+=(redis-server redis-tools)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nutcracker >/dev/null || missing+=(nutcracker)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --quiet --bin respguard --example pipeline_bench
generator=target/release/examples/pipeline_bench
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"

declare -A ports
ports[direct]=$redis_port
ports[direct+ttl]=$redis_port
wanted() { [[ " $TARGETS " == *" $1 "* ]]; }
if wanted respguard; then start_respguard "ports[respguard]" "$CONF_GUARDS_OFF"; fi
if wanted respguard+all; then start_respguard "ports[respguard+all]" "$CONF_ALL_GUARDS"; fi
if wanted respguard-mux; then
  start_respguard "ports[respguard-mux]" "$CONF_GUARDS_OFF
[upstream]
connections = \"multiplexed\""
fi
if wanted respguard-mux+all; then
  start_respguard "ports[respguard-mux+all]" "$CONF_ALL_GUARDS
[upstream]
connections = \"multiplexed\""
fi
if wanted respguard-mux-percore; then
  start_respguard "ports[respguard-mux-percore]" "$CONF_GUARDS_OFF
[upstream]
connections = \"multiplexed\"
[proxy]
runtime = \"per-core\""
fi
if wanted respguard-mux+all-percore; then
  start_respguard "ports[respguard-mux+all-percore]" "$CONF_ALL_GUARDS
[upstream]
connections = \"multiplexed\"
[proxy]
runtime = \"per-core\""
fi
if wanted respguard-mux-1thread; then
  start_respguard "ports[respguard-mux-1thread]" "$CONF_GUARDS_OFF
[upstream]
connections = \"multiplexed\"
[proxy]
worker_threads = 1"
fi
if wanted respguard-mux+all-1thread; then
  start_respguard "ports[respguard-mux+all-1thread]" "$CONF_ALL_GUARDS
[upstream]
connections = \"multiplexed\"
[proxy]
worker_threads = 1"
fi
if wanted respguard+all-noinsight; then
  start_respguard "ports[respguard+all-noinsight]" "$CONF_ALL_GUARDS
[keyspace]
enabled = false"
fi
if wanted respguard+all-insight-every; then
  start_respguard "ports[respguard+all-insight-every]" "$CONF_ALL_GUARDS
[keyspace]
sample_rate = 1"
fi
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
if wanted haproxy || wanted haproxy+ttl; then
  ports[haproxy]=$(free_port)
  ports[haproxy+ttl]=${ports[haproxy]}
  write_haproxy_config "$work/haproxy.cfg" "${ports[haproxy]}" "$redis_port"
  haproxy -f "$work/haproxy.cfg" -db &
  pids+=($!)
  wait_port "${ports[haproxy]}"
fi
if wanted twemproxy; then
  ports[twemproxy]=$(free_port)
  write_nutcracker_config "$work/nutcracker.yml" "${ports[twemproxy]}" "$redis_port"
  nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" &
  pids+=($!)
  wait_port "${ports[twemproxy]}"
fi
targets=()
for t in $TARGETS; do
  [ -n "${ports[$t]:-}" ] || { echo "unknown target $t" >&2; exit 1; }
  targets+=("$t")
done

# Whether TARGET sends the TTL itself (the anchors of the TTL rows).
carries_ttl() { [[ $1 == *+ttl ]]; }
# Whether TEST is a TTL row.
ttl_test() { [[ " $TTL_TESTS " == *" $1 "* ]]; }
# Whether TARGET runs in TEST's rows: the +ttl targets only in the TTL rows.
runs_in() { ! carries_ttl "$1" || ttl_test "$2"; }
# Whether Redis holds TARGET's TTLs after a TTL row: every target that carries them, and
# respguard+all and respguard-mux+all (whose TTL guard adds them).
stores_ttl() {
  carries_ttl "$1" || [ "$1" = respguard+all ] || [ "$1" = respguard-mux+all ] \
    || [ "$1" = respguard-mux+all-percore ] || [ "$1" = respguard-mux+all-1thread ]
}

# A value of $1 bytes, as redis-benchmark -d writes it.
value_of() { head -c "$1" /dev/zero | tr '\0' x; }

# "ops/s p50_ms p99_ms" from the CSV redis-benchmark and pipeline_bench print.
parse_csv() { awk -F'","' 'NR==2 { gsub(/"/, "", $0); split($0, f, ","); print f[2], f[5], f[7] }'; }

# The load of one run, its CSV on standard output: TARGET TEST PIPELINE CLIENTS SIZE REQUESTS.
load() {
  local target=$1 test=$2 pipe=$3 clients=$4 size=$5 requests=$6 port=${ports[$1]}
  local common=(-p "$port" -P "$pipe" -c "$clients" -n "$requests")
  case "$test" in
    SET)
      if carries_ttl "$target"; then
        redis-benchmark -h 127.0.0.1 "${common[@]}" -r "$KEYSPACE" --csv \
          SET key:__rand_int__ "$(value_of "$size")" PX "$TTL_MS"
      else
        redis-benchmark -h 127.0.0.1 "${common[@]}" -d "$size" -r "$KEYSPACE" -t SET --csv
      fi ;;
    HSET)
      local ops=("HSET key:__rand_int__ field __data__")
      if carries_ttl "$target"; then ops+=("PEXPIRE key:__rand_int__ $TTL_MS NX"); fi
      "$generator" --host 127.0.0.1 "${common[@]}" -d "$size" -r "$KEYSPACE" --csv --name HSET "${ops[@]}" ;;
    GET)
      write_get_key "$size"
      redis-benchmark -h 127.0.0.1 "${common[@]}" -d "$size" -t GET --csv ;;
    *)
      redis-benchmark -h 127.0.0.1 "${common[@]}" -d "$size" -t "$test" --csv ;;
  esac
}

# measure TARGET TEST PIPELINE CLIENTS SIZE REQUESTS -> "ops/s p50_ms p99_ms"
# Fails loudly when the load tool reports an error or no result, and, after a TTL row, when
# a target that should have left an expiry on the keys did not. Redis is emptied after each
# run: LPUSH always pushes onto one list, which would otherwise reach tens of GiB over the
# 16 KiB rows (and make later runs measure a bigger Redis); so GET's key is written first,
# with a value of the row's size.
measure() {
  local result key
  result=$(load "$@" 2>"$work/load.err" | parse_csv) || true
  if [ -z "$result" ] || grep -qi error "$work/load.err"; then
    echo "measure $*: no result" >&2
    cat "$work/load.err" >&2
    return 1
  fi
  if ttl_test "$2" && stores_ttl "$1"; then
    key=$(redis-cli -p "$redis_port" randomkey)
    if [ "$(redis-cli -p "$redis_port" pttl "$key")" -le 0 ]; then
      echo "measure $*: $key has no TTL" >&2
      return 1
    fi
  fi
  redis-cli -p "$redis_port" flushall >/dev/null
  echo "$result"
}

# The targets of TEST's rows, in TARGETS' order.
row_targets() {
  local t
  for t in "${targets[@]}"; do
    if runs_in "$t" "$1"; then echo "$t"; fi
  done
}

# One row: each of its targets, ROUNDS times in rotating order. Sets row_list (the targets
# measured) and med_rps, med_p50, med_p99.
declare -A med_rps med_p50 med_p99
row_list=()
row() {
  local test=$1 pipe=$2 clients=$3 size=$4 requests=$5 round i n t r p50 p99 result
  declare -A all_rps=() all_p50=() all_p99=()
  mapfile -t row_list < <(row_targets "$test")
  med_rps=(); med_p50=(); med_p99=()
  n=${#row_list[@]}
  for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      t=${row_list[$(( (i + round) % n ))]}
      result=$(measure "$t" "$test" "$pipe" "$clients" "$size" "$requests") || exit 1
      read -r r p50 p99 <<<"$result"
      all_rps[$t]+="$r "; all_p50[$t]+="$p50 "; all_p99[$t]+="$p99 "
    done
  done
  for t in "${row_list[@]}"; do
    med_rps[$t]=$(tr ' ' '\n' <<<"${all_rps[$t]}" | grep . | median)
    med_p50[$t]=$(tr ' ' '\n' <<<"${all_p50[$t]}" | grep . | median)
    med_p99[$t]=$(tr ' ' '\n' <<<"${all_p99[$t]}" | grep . | median)
  done
}

# What respguard+all is compared with in TEST's rows: haproxy+ttl in the TTL rows (when it
# runs), plain haproxy in the others.
anchor_of() {
  if ttl_test "$1" && wanted haproxy+ttl; then echo haproxy+ttl; else echo haproxy; fi
}
# The direct Redis a target's added latency is measured from in TEST's rows: direct+ttl for
# the targets whose Redis stores an expiry in the TTL rows, when it runs.
base_of() {
  if ttl_test "$2" && stores_ttl "$1" && wanted direct+ttl; then echo direct+ttl; else echo direct; fi
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# "ratio | met" of the row's results for targets $1 and $2 (ops/s): met when $1's is at or
# above $2's ($3 = above: strictly above); "- | -" when either did not run.
goal_cells() {
  local a=${med_rps[$1]:-} b=${med_rps[$2]:-} r
  if [ -z "$a" ] || [ -z "$b" ]; then echo "- | -"; return; fi
  r=$(ratio "$a" "$b")
  awk -v r="$r" -v strict="${3:-}" 'BEGIN {
    met = (strict == "above") ? (r > 1.0) : (r >= 1.0)
    printf "%s | %s", r, met ? "yes" : "no" }'
}

# The table over every row, then the goals checked row by row.
matrix() {
  local size clients pipe test t twem anchor goals=()
  echo "| test | pipeline | clients | value | target | ops/s | vs direct | p50 ms | vs direct | p99 ms | vs direct |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for size in $SIZES; do
    for clients in $CLIENT_COUNTS; do
      for pipe in $PIPELINES; do
        for test in $TESTS; do
          row "$test" "$pipe" "$clients" "$size" "$REQUESTS"
          for t in "${row_list[@]}"; do
            printf '| %s | %s | %s | %s B | %s | %.0f | %s | %.3f | %s | %.3f | %s |\n' \
              "$test" "$pipe" "$clients" "$size" "$t" "${med_rps[$t]}" \
              "$(ratio "${med_rps[$t]}" "${med_rps[direct]:-0}")" "${med_p50[$t]}" \
              "$(ratio "${med_p50[$t]}" "${med_p50[direct]:-0}")" "${med_p99[$t]}" \
              "$(ratio "${med_p99[$t]}" "${med_p99[direct]:-0}")"
          done
          anchor=$(anchor_of "$test")
          if [ "$pipe" -gt 1 ]; then
            twem=$(goal_cells respguard+all twemproxy above)
          else
            twem="$(goal_cells respguard+all twemproxy | cut -d' ' -f1) | (not a goal)"
          fi
          goals+=("| $test | $pipe | $clients | $size B | $(goal_cells respguard haproxy) | $anchor | $(goal_cells respguard+all "$anchor") | $twem |")
        done
      done
    done
  done

  echo
  echo "Goals (throughput): respguard at or above haproxy in every row, guards off and with every guard on;"
  echo "with every guard on, the TTL rows ($TTL_TESTS) against haproxy+ttl (the same TTLs in the commands),"
  echo "the others against haproxy; above twemproxy in pipelined rows."
  echo
  echo "| test | pipeline | clients | value | guards off / haproxy | met | anchor | all guards / anchor | met | all guards / twemproxy | met |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${goals[@]}"
  echo
}

# Microseconds target $1 adds to direct Redis's (its base_of) median latency in test $2's
# row; empty when either did not run.
added_p50() {
  local base
  base=$(base_of "$1" "$2")
  [ -n "${med_p50[$1]:-}" ] && [ -n "${med_p50[$base]:-}" ] || return 0
  awk -v a="${med_p50[$1]}" -v d="${med_p50[$base]}" 'BEGIN { printf "%+.0f", (a - d) * 1000 }'
}

# "respguard's added p50 | the other's | met" for targets $1 (a respguard) and $2 in test
# $3's row: met when $1 adds at most what $2 adds.
latency_goal_cells() {
  local a b
  a=$(added_p50 "$1" "$3"); b=$(added_p50 "$2" "$3")
  if [ -z "$a" ] || [ -z "$b" ]; then echo "- | - | -"; return; fi
  awk -v a="$a" -v b="$b" 'BEGIN { printf "%s | %s | %s", a, b, (a + 0 <= b + 0) ? "yes" : "no" }'
}

# One client without pipelining: the latency a request adds, then the goals on it.
latency_table() {
  local test t anchor goals=()
  echo "One client, no pipelining, 100 B values ($LATENCY_REQUESTS requests): goal p99 within 50 µs of direct."
  echo "'added p50' is over the direct Redis sent the same commands (direct+ttl for the targets whose"
  echo "Redis stores a TTL in the TTL rows, direct otherwise)."
  echo
  echo "| test | target | p50 µs | p99 µs | added p50 µs | p99 - direct µs |"
  echo "|---|---|---|---|---|---|"
  for test in $TESTS; do
    row "$test" 1 1 100 "$LATENCY_REQUESTS"
    for t in "${row_list[@]}"; do
      awk -v t="$test" -v n="$t" -v a="${med_p50[$t]}" -v b="${med_p99[$t]}" -v d="${med_p99[direct]:-0}" \
        -v added="$(added_p50 "$t" "$test")" \
        'BEGIN { printf "| %s | %s | %.0f | %.0f | %s | %+.0f |\n", t, n, a * 1000, b * 1000, added, (b - d) * 1000 }'
    done
    anchor=$(anchor_of "$test")
    goals+=("| $test | $(latency_goal_cells respguard haproxy "$test") | $anchor | $(latency_goal_cells respguard+all "$anchor" "$test") |")
  done
  echo
  echo "Goal (one client, no pipelining): the p50 respguard adds at or below what haproxy adds, guards off"
  echo "and with every guard on (TTL rows: against haproxy+ttl)."
  echo
  echo "| test | guards off: added p50 µs | haproxy | met | anchor | all guards: added p50 µs | anchor | met |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${goals[@]}"
}

[ "$LATENCY_ONLY" = 1 ] || matrix
latency_table

echo
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f3); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(nutcracker -V 2>&1 | head -1)"
echo "command: ROUNDS=$ROUNDS REQUESTS=$REQUESTS KEYSPACE=$KEYSPACE LATENCY_REQUESTS=$LATENCY_REQUESTS LATENCY_ONLY=$LATENCY_ONLY TESTS=\"$TESTS\" PIPELINES=\"$PIPELINES\" CLIENT_COUNTS=\"$CLIENT_COUNTS\" SIZES=\"$SIZES\" TARGETS=\"$TARGETS\" scripts/bench.sh"
