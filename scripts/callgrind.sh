#!/usr/bin/env bash
# Instructions the proxy's sessions spend per command, counted by callgrind: deterministic,
# so two configurations can be compared where throughput on a noisy machine cannot.
#
#   scripts/callgrind.sh                      # SET GET LPUSH HSET, guards off vs all guards
#   TESTS="lpush" REQUESTS=50000 scripts/callgrind.sh
#   TESTS="evalsha" CONFIGS="script-rule" REQUESTS=50000 scripts/callgrind.sh
#   KEEP=/tmp/cg CALLGRIND_FLAGS=--dump-instr=yes TESTS=set scripts/callgrind.sh
#     # keeps the profiles; scripts/callgrind-asm.py then shows instructions per command
#   RESPGUARD=/tmp/respguard-before scripts/callgrind.sh   # a kept binary, not built here
#
# The test `evalsha` is a scripted enqueue: `EVALSHA <sha> 1 myq:bench enqueue <job>` of a
# script that pushes the job, loaded first, each job's content random (`-r`), so with the
# `script-rule` configuration nearly every call is read, judged and forwarded.
#
# For each configuration below and each test, runs a release respguard under
# `valgrind --tool=callgrind` collecting only inside session tasks (the spawned task that
# runs a Session), drives
# `redis-benchmark -c 10 -P 32` through it, and prints instructions per command.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=${TESTS:-"set get lpush hset"}
REQUESTS=${REQUESTS:-100000}
CONFIGS=${CONFIGS:-"all-guards"}   # compared with guards-off; also: defaults metrics-off pressure queue,
# script-rule (a generic enqueue rule reading the `evalsha` test's script),
# all-guards-no-insight all-guards-insight-every guards-off-no-insight (keyspace insight),
# mux mux-all-guards (upstream.connections = "multiplexed")

if ! command -v valgrind >/dev/null || ! command -v redis-benchmark >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq valgrind redis-server redis-tools >/dev/null
fi
# RESPGUARD: the binary measured (a kept build, to compare two trees); built here when unset.
if [ -z "${RESPGUARD:-}" ]; then
  cargo build --release --quiet
  RESPGUARD=./target/release/respguard
fi
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"

declare -A configs
configs[guards-off]=$CONF_GUARDS_OFF
# No configuration at all: the defaults (shedding on, Redis's maxmemory its limit).
configs[defaults]=''
# Guards off and metrics not recorded: what recording them costs.
configs[metrics-off]="$CONF_GUARDS_OFF"'
[admin]
metrics = false'
# Every guard on, as in scripts/bench.sh's respguard+all.
configs[all-guards]=$CONF_ALL_GUARDS
# Every guard on, the keyspace insight off, or observing every command (its default,
# all-guards, observes one in keyspace.sample_rate).
configs[all-guards-no-insight]="$CONF_ALL_GUARDS"'
[keyspace]
enabled = false'
configs[all-guards-insight-every]="$CONF_ALL_GUARDS"'
[keyspace]
sample_rate = 1'
configs[guards-off-no-insight]="$CONF_GUARDS_OFF"'
[keyspace]
enabled = false'
# Guards off and every guard on, clients multiplexed over shared connections (the lanes'
# tasks are counted with the sessions').
configs[mux]="$CONF_GUARDS_OFF"'
[upstream]
connections = "multiplexed"'
configs[mux-all-guards]="$CONF_ALL_GUARDS"'
[upstream]
connections = "multiplexed"'
# Monitor polling, shedding levels and rules configured but not active.
configs[pressure]=$CONF_PRESSURE
# The same, plus redis-benchmark's list followed as a queue with a depth limit.
configs[queue]=$CONF_QUEUE

# The scripted enqueue of the `evalsha` test, loaded into Redis, and a generic rule reading it.
ENQUEUE_SCRIPT="if ARGV[1] == 'enqueue' then return redis.call('RPUSH', KEYS[1], ARGV[2]) end return 0"
enqueue_sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$ENQUEUE_SCRIPT")
configs[script-rule]="$CONF_GUARDS_OFF"'
[[guards.enqueue.rules]]
preset = "generic"
name = "bench-script"
pattern = "myq:*"
script = { sha1 = "'"$enqueue_sha"'" }
payload_arg = 2
operation_arg = 1
operation = "enqueue"
exclude = ["/id"]
action = "drop"'

# The redis-benchmark arguments of TEST: a built-in test, or the scripted enqueue.
bench_args() {
  case "$1" in
    evalsha) echo "-r 1000000 EVALSHA $enqueue_sha 1 myq:bench enqueue {\"id\":1,\"task\":\"mail\",\"n\":\"__rand_int__\"}" ;;
    *) echo "-t $1" ;;
  esac
}

# measure CONFIG_NAME TEST -> instructions per command in session tasks
measure() {
  local port conf out pid
  port=$(free_port)
  conf="$work/$1.toml"
  out="$work/callgrind.$1.$2"
  printf '%s\n' "${configs[$1]}" > "$conf"
  valgrind --tool=callgrind --callgrind-out-file="$out" ${CALLGRIND_FLAGS:-} \
    --toggle-collect='respguard::listener::Listener::run::{{closure}}::{{closure}}' \
    --toggle-collect='respguard::mux::lane::Lane::run::{{closure}}' \
    "$RESPGUARD" --config "$conf" --listen "127.0.0.1:$port" \
    --upstream "redis://127.0.0.1:$redis_port" --admin-listen "" --log-level error \
    2>"$work/valgrind.log" &
  pid=$!
  wait_port "$port"
  write_get_key 100
  # shellcheck disable=SC2046 # bench_args is split into arguments on purpose
  redis-benchmark -h 127.0.0.1 -p "$port" -c 10 -n "$REQUESTS" -P 32 -d 100 -q $(bench_args "$2") >/dev/null
  kill -INT "$pid"
  wait "$pid" || true
  [ -n "${KEEP:-}" ] && cp "$out" "$KEEP/" || true
  [ -s "$out" ] || { cat "$work/valgrind.log" >&2; exit 1; }
  local total
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  echo $(( total / REQUESTS ))
}

echo "| test | config | instructions per command | vs guards-off |"
echo "|---|---|---|---|"
for t in $TESTS; do
  base=$(measure guards-off "$t")
  echo "| $t | guards-off | $base | 1.000 |"
  for c in $CONFIGS; do
    n=$(measure "$c" "$t")
    awk -v t="$t" -v c="$c" -v n="$n" -v b="$base" 'BEGIN { printf "| %s | %s | %d | %.3f |\n", t, c, n, n/b }'
  done
done
echo
echo "command: TESTS=\"$TESTS\" CONFIGS=\"$CONFIGS\" REQUESTS=$REQUESTS scripts/callgrind.sh (redis-benchmark -c 10 -P 32 -d 100)"
