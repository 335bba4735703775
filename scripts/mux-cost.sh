#!/usr/bin/env bash
# What a multiplexing proxy spends per unpipelined command, in counts that survive a noisy
# machine: multiplexed respguard against twemproxy (nutcracker, one server connection).
#
#   scripts/mux-cost.sh
#   TESTS="SET" CLIENTS=500 TARGETS="respguard-mux twemproxy" scripts/mux-cost.sh
#   CALLGRIND=0 scripts/mux-cost.sh            # system calls and batching only
#   KEEP=/tmp/cg scripts/mux-cost.sh           # keeps the callgrind profiles
#   RESPGUARD=/tmp/respguard-before scripts/mux-cost.sh   # a kept binary, not built here
#
# For each target and test, one redis-benchmark run (-c $CLIENTS -P $PIPELINE -d 100) of
# $REQUESTS requests, after a warm-up that connects every client, gives:
# - system calls per command of the whole proxy process (perf's syscall tracepoints, every
#   thread): reads, writes, epoll_wait, futex (a thread woken by another);
# - the proxy's and Redis's CPU time per command (user + system, from /proc; noisier, but
#   Redis's shows what the proxy's batching saves it);
# - how well the proxy batches toward Redis: Redis's `INFO stats` before and after,
#   commands per Redis read (`total_reads_processed`) and per Redis write
#   (`total_writes_processed`);
# - with CALLGRIND=1 (the default), a second run under `valgrind --tool=callgrind` of the
#   whole process, instrumented only for the measured requests (`--instr-atstart=no`, then
#   `callgrind_control -i on` and `off`): user-space instructions per command. Valgrind
#   runs one thread at a time and slows the proxy many times over, so its batching differs
#   and cross-thread costs do not show: compare targets measured the same way.
#
# Targets: respguard and respguard+all (one upstream connection per client, guards off and
# every guard), haproxy (TCP mode), respguard-mux, respguard-mux+all, respguard-mux-percore (guards off, per-core
# runtime), respguard-mux-1thread (guards off, a multi-thread runtime of one worker),
# twemproxy, direct (Redis itself: syscalls and batching only).
# Needs perf with access to tracepoints (run as root, or lower kernel.perf_event_paranoid).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-100000}
CG_REQUESTS=${CG_REQUESTS:-20000}
TESTS=${TESTS:-"SET GET"}
CLIENTS=${CLIENTS:-50}
PIPELINE=${PIPELINE:-1}
TARGETS=${TARGETS:-"direct respguard-mux respguard-mux+all twemproxy"}
CALLGRIND=${CALLGRIND:-1}
CALLS="read write readv writev recvfrom sendto epoll_wait epoll_ctl futex sched_yield"

# RESPGUARD: the binary measured (a kept build, to compare two trees); built here when unset.
if [ -z "${RESPGUARD:-}" ]; then
  cargo build --release --quiet --bin respguard
  RESPGUARD=./target/release/respguard
fi
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
wait_port "$redis_port"
write_get_key 100

MUX='
[upstream]
connections = "multiplexed"'

# The configuration text of a respguard target.
config_of() {
  case $1 in
    respguard) echo "$CONF_GUARDS_OFF" ;;
    respguard+all) echo "$CONF_ALL_GUARDS" ;;
    respguard-mux) echo "$CONF_GUARDS_OFF$MUX" ;;
    respguard-mux+all) echo "$CONF_ALL_GUARDS$MUX" ;;
    respguard-mux-percore) echo "$CONF_GUARDS_OFF$MUX
[proxy]
runtime = \"per-core\"" ;;
    respguard-mux-1thread) echo "$CONF_GUARDS_OFF$MUX
[proxy]
worker_threads = 1" ;;
    *) echo "unknown target $1" >&2; exit 1 ;;
  esac
}

# start TARGET PREFIX... -> sets $port and $pid; PREFIX (valgrind ...) runs the proxy.
start() {
  local t=$1
  shift
  port=$(free_port)
  case $t in
    direct) port=$redis_port; pid=$redis_pid; return ;;
    haproxy)
      write_haproxy_config "$work/haproxy.cfg" "$port" "$redis_port"
      "$@" haproxy -f "$work/haproxy.cfg" -db 2>"$work/$t.err" &
      ;;
    twemproxy)
      write_nutcracker_config "$work/nutcracker.yml" "$port" "$redis_port"
      "$@" nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" 2>"$work/$t.err" &
      ;;
    *)
      config_of "$t" > "$work/$t.toml"
      "$@" "$RESPGUARD" --config "$work/$t.toml" --listen "127.0.0.1:$port" \
        --upstream "redis://127.0.0.1:$redis_port" --admin-listen "" --log-level error 2>"$work/$t.err" &
      ;;
  esac
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$t never listened" >&2
  exit 1
}

stop() {
  [ "$1" = direct ] && return
  # HAProxy in the foreground (-db) ends on SIGTERM; the others on SIGINT, as on Ctrl-C.
  if [ "$1" = haproxy ]; then kill -TERM "$pid" 2>/dev/null || true; else kill -INT "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

bench() { redis-benchmark -h 127.0.0.1 -p "$port" -t "$1" -c "$CLIENTS" -P "$PIPELINE" -d 100 -n "$2" -q >/dev/null 2>&1; }

stat_of() { redis-cli -p "$redis_port" info stats | tr -d '\r' | awk -F: -v k="$1" '$1 == k { print $2 }'; }

# CPU ticks (user + system) of process $1.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

printf '| test | target | instructions/cmd |'
for c in $CALLS; do printf ' %s |' "$c"; done
printf ' syscalls/cmd | CPU µs/cmd | Redis CPU µs/cmd | cmds per Redis read | cmds per Redis write |\n'
printf '|---|---|---|'; for _ in $CALLS; do printf -- '---|'; done; printf -- '---|---|---|---|---|\n'

events=""
for c in $CALLS; do events+="${events:+,}syscalls:sys_enter_$c"; done
hz=$(getconf CLK_TCK)

for test in $TESTS; do
  for t in $TARGETS; do
    instr="—"
    if [ "$CALLGRIND" = 1 ] && [ "$t" != direct ]; then
      out="$work/callgrind.$t.$test"
      start "$t" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out"
      bench "$test" $((CLIENTS * 20))
      callgrind_control -i on "$pid" >/dev/null 2>&1
      bench "$test" "$CG_REQUESTS"
      callgrind_control -i off "$pid" >/dev/null 2>&1
      stop "$t"
      [ -n "${KEEP:-}" ] && cp "$out" "$KEEP/" || true
      total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ { gsub(",", "", $1); print $1 }')
      instr=$(( total / CG_REQUESTS ))
    fi
    start "$t"
    bench "$test" $((CLIENTS * 20))
    reads0=$(stat_of total_reads_processed)
    writes0=$(stat_of total_writes_processed)
    cmds0=$(stat_of total_commands_processed)
    ticks0=$(ticks "$pid")
    redis_ticks0=$(ticks "$redis_pid")
    perf stat -x, -e "$events" -p "$pid" -o "$work/perf.csv" -- \
      redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -c "$CLIENTS" -P "$PIPELINE" -d 100 -n "$REQUESTS" -q >/dev/null 2>&1
    ticks1=$(ticks "$pid")
    redis_ticks1=$(ticks "$redis_pid")
    reads1=$(stat_of total_reads_processed)
    writes1=$(stat_of total_writes_processed)
    cmds1=$(stat_of total_commands_processed)
    stop "$t"
    printf '| %s | %s | %s |' "$test" "$t" "$instr"
    awk -F, -v n="$REQUESTS" -v calls="$CALLS" '
      /syscalls:sys_enter_/ { sub(/.*sys_enter_/, "", $3); count[$3] = $1 }
      END {
        k = split(calls, c, " ")
        for (i = 1; i <= k; i++) { all += count[c[i]]; printf " %.3f |", count[c[i]] / n }
        printf " %.3f |", all / n
      }' "$work/perf.csv"
    [ "$t" = direct ] && ticks1=$ticks0 # the proxy is Redis: its time is in the next column
    awk -v n="$REQUESTS" -v hz="$hz" -v t=$((ticks1 - ticks0)) -v rt=$((redis_ticks1 - redis_ticks0)) \
      -v r=$((reads1 - reads0)) \
      -v w=$((writes1 - writes0)) -v c=$((cmds1 - cmds0)) \
      'BEGIN { printf " %.1f | %.1f | %.1f | %.1f |\n", t * 1e6 / hz / n, rt * 1e6 / hz / n, c / (r ? r : 1), c / (w ? w : 1) }'
  done
done
echo
echo "command: PIPELINE=$PIPELINE REQUESTS=$REQUESTS CG_REQUESTS=$CG_REQUESTS TESTS=\"$TESTS\" CLIENTS=$CLIENTS TARGETS=\"$TARGETS\" scripts/mux-cost.sh (redis-benchmark -c $CLIENTS -P $PIPELINE -d 100)"
