#!/usr/bin/env bash
# System calls per command of Redis directly and of respguard in each runtime model (guards
# off), counted by perf's syscall tracepoints on the serving process for the length of one
# redis-benchmark run of a known number of requests.
#
#   scripts/syscalls.sh
#   REQUESTS=200000 PIPELINES="1 32" CLIENTS=50 TARGETS="direct respguard-percore" scripts/syscalls.sh
#
# Needs perf with access to tracepoints (run as root, or lower kernel.perf_event_paranoid).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
TEST=${TEST:-SET}
PIPELINES=${PIPELINES:-"1 32"}
CLIENTS=${CLIENTS:-50}
TARGETS=${TARGETS:-"direct respguard-multithread respguard-1thread respguard-percore"}
CALLS=${CALLS:-"read write readv writev recvfrom sendto epoll_wait epoll_ctl futex sched_yield"}

cargo build --release --quiet
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
  --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
wait_port "$redis_port"

declare -A ports procs
ports[direct]=$redis_port
procs[direct]=$redis_pid
model() {
  start_respguard "ports[$1]" "$CONF_GUARDS_OFF
[proxy]
$2"
  procs[$1]=${pids[-1]}
}
for t in $TARGETS; do
  case $t in
    direct) ;;
    respguard-multithread) model "$t" 'runtime = "multi-thread"' ;;
    respguard-1thread) model "$t" 'runtime = "multi-thread"
worker_threads = 1' ;;
    respguard-percore) model "$t" 'runtime = "per-core"' ;;
    *) echo "unknown target $t" >&2; exit 1 ;;
  esac
done

events=""
for c in $CALLS; do events+="${events:+,}syscalls:sys_enter_$c"; done

printf '| target | pipeline |'; for c in $CALLS; do printf ' %s |' "$c"; done; printf ' all |\n'
printf '|---|---|'; for _ in $CALLS; do printf -- '---|'; done; printf -- '---|\n'
for pipe in $PIPELINES; do
  for t in $TARGETS; do
    perf stat -x, -e "$events" -p "${procs[$t]}" -o "$work/perf.csv" -- \
      redis-benchmark -h 127.0.0.1 -p "${ports[$t]}" -t "$TEST" -P "$pipe" -c "$CLIENTS" \
      -n "$REQUESTS" -q >/dev/null
    redis-cli -p "$redis_port" flushall >/dev/null
    printf '| %s | %s |' "$t" "$pipe"
    awk -F, -v n="$REQUESTS" -v calls="$CALLS" '
      /syscalls:sys_enter_/ { sub(/.*sys_enter_/, "", $3); count[$3] = $1 }
      END {
        k = split(calls, c, " ")
        for (i = 1; i <= k; i++) { all += count[c[i]]; printf " %.3f |", count[c[i]] / n }
        printf " %.3f |\n", all / n
      }' "$work/perf.csv"
  done
done
echo
echo "per $TEST command: $REQUESTS requests, $CLIENTS clients; command: REQUESTS=$REQUESTS TEST=$TEST PIPELINES=\"$PIPELINES\" CLIENTS=$CLIENTS TARGETS=\"$TARGETS\" scripts/syscalls.sh"
