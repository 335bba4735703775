#!/usr/bin/env bash
# Throughput of a Redis Cluster directly (`redis-benchmark --cluster`) and through respguard
# with a `redis-cluster://` upstream, in one interleaved run so every target sees the same
# machine noise. Prints a markdown table of requests/s per target, each as a ratio of the
# direct cluster's.
#
#   scripts/bench-cluster.sh                                   # 3 rounds of 5 s runs (about 5 min)
#   ROUNDS=2 SECONDS_PER_RUN=3 scripts/bench-cluster.sh        # a shorter run
#   TESTS=SET PIPELINES=16 TARGETS="direct respguard" scripts/bench-cluster.sh
#
# The cluster: six redis-server processes on free ports (cluster-enabled, no persistence),
# joined by `redis-cli --cluster create … --cluster-replicas 1`: three primaries, a replica
# each. The run starts once every node says `cluster_state:ok` and sees six nodes, none
# failing, and every replica's link to its primary is up.
#
# Targets:
#   direct                  redis-benchmark --cluster against the first node: it reads the
#                           slots, and each client talks to one primary directly
#   respguard               redis-benchmark (not in cluster mode) against respguard, guards
#                           off: the proxy routes every command by slot
#   respguard+ttl           the same against respguard with the default-TTL guard on every
#                           key (`*`, 1h: every SET gets PX appended)
#   respguard+mux           as respguard, multiplexed (`upstream.connections =
#                           "multiplexed"`: the clients share two connections per node);
#                           not in the default TARGETS
#   respguard--cluster      redis-benchmark --cluster against the guards-off respguard, which
#                           answers CLUSTER SLOTS/NODES as one node serving every slot
#   respguard+ttl--cluster  the same against the TTL respguard
# The redis-benchmark of Redis 7.0 refuses a one-node cluster ("Invalid cluster: 1 node(s).");
# the two --cluster targets through respguard are then left out, with a note under the table.
#
# Where the keys go (redis-benchmark's own key names): in cluster mode redis-benchmark puts
# a hash tag for the first slot of each client's node into every key (`key:{tag}:<n>`), so
# direct, each primary gets the keys of one slot; through respguard in cluster mode the one
# "node" serves slot 0 first, so every key is in slot 0, on one primary. Not in cluster mode
# SET writes `key:<random below KEYSPACE>` (every slot, every primary) and GET reads the one
# key `key:__rand_int__` (one primary). GET's keys are written first, by the same command
# as the row with `-t SET`, so GET never reads a missing key (a null reply).
#
# redis-benchmark in cluster mode runs one thread per primary it sees unless told otherwise
# (direct: 3; against respguard: 1); THREADS sets `--threads` for every target alike.
#
# Run length. redis-benchmark with threads (always in cluster mode) stops only at a 250 ms
# tick of its threads, so the time it divides by is the run's rounded up to the next 250 ms:
# 20,000 SETs against this machine's cluster "took" 0.25 s whatever the pipeline (79k req/s
# unpipelined, 78k with a pipeline of 16; 200,000 took 1.5 s and 0.5 s: 132k and 388k).
# A fixed REQUESTS would understate the direct cluster by up to 250 ms over the run's
# length, so each row starts with a calibration of each target (not counted): REQUESTS
# requests, four times more until the run lasts 1.5 s; then every run of that target in the
# row sends what it did in SECONDS_PER_RUN at the calibration's rate (never fewer than
# REQUESTS). The table shows each cell's run length: a threaded run's rate is low by at
# most 0.25 s over it.
#
# Each cell is the median over ROUNDS; targets run in a rotating order within each round.
# A run fails loudly when redis-benchmark reports an error reply (it stops at the first) or
# gives no result, when a SET row left no key in the cluster, or a +ttl target's SET row
# left a key without an expiry. The cluster is emptied (FLUSHALL on every primary) after every run.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-50000}          # the calibration run; at least this many in every run
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}  # how long each counted run lasts, roughly
TESTS=${TESTS:-"SET GET"}
PIPELINES=${PIPELINES:-"1 16"}
CLIENTS=${CLIENTS:-50}
SIZE=${SIZE:-100}
KEYSPACE=${KEYSPACE:-100000}    # SET keys: key:<random below this>
THREADS=${THREADS:-}            # redis-benchmark --threads for every target; empty: its default
TARGETS=${TARGETS:-"direct respguard respguard+ttl respguard--cluster respguard+ttl--cluster"}
NODE_TIMEOUT_MS=${NODE_TIMEOUT_MS:-15000}  # cluster-node-timeout: long, so a node starved of
                                           # CPU under the load is not failed over mid-run

if ! command -v redis-benchmark >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi

cargo build --release --quiet --bin respguard
. scripts/lib.sh

# --- The cluster -------------------------------------------------------------------------

NODES=6
node_ports=()
for i in $(seq 1 "$NODES"); do
  port=$(free_port)
  bus=$(free_port)
  mkdir -p "$work/node-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "$bus" \
    --cluster-node-timeout "$NODE_TIMEOUT_MS" --repl-diskless-sync-delay 0 \
    --dir "$work/node-$port" --logfile "$work/node-$port/redis.log" &
  pids+=($!)
  node_ports+=("$port")
done
for port in "${node_ports[@]}"; do wait_port "$port"; done
seeds=()
for port in "${node_ports[@]}"; do seeds+=("127.0.0.1:$port"); done
redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$work/create.log" 2>&1 || {
  echo "redis-cli --cluster create failed:" >&2
  cat "$work/create.log" >&2
  exit 1
}

# Whether the node on $1 sees the whole cluster settled: state ok, every slot assigned,
# six nodes, none failing or still in the handshake, and, for a replica, its link up.
node_settled() {
  local info nodes
  info=$(redis-cli -p "$1" cluster info) || return 1
  [[ $info == *cluster_state:ok* && $info == *cluster_slots_assigned:16384* ]] || return 1
  nodes=$(redis-cli -p "$1" cluster nodes) || return 1
  [ "$(grep -c . <<<"$nodes")" -eq "$NODES" ] || return 1
  [ "$(grep -c master <<<"$nodes")" -eq $((NODES / 2)) ] || return 1
  ! grep -qE 'fail|handshake|noaddr' <<<"$nodes" || return 1
  if redis-cli -p "$1" role | head -1 | grep -q slave; then
    redis-cli -p "$1" info replication | grep -q 'master_link_status:up' || return 1
  fi
}

# Wait (up to 60 s) until every node is settled.
wait_cluster() {
  local port
  for port in "${node_ports[@]}"; do
    for _ in $(seq 1 600); do
      node_settled "$port" && continue 2
      sleep 0.1
    done
    echo "the cluster never settled, seen from $port:" >&2
    redis-cli -p "$port" cluster info >&2 || true
    redis-cli -p "$port" cluster nodes >&2 || true
    exit 1
  done
}
wait_cluster

# The primaries' ports, from the first node's view.
primaries() {
  redis-cli -p "${node_ports[0]}" cluster nodes | awk '$3 ~ /master/ { split($2, a, "[:@]"); print a[2] }'
}
mapfile -t primary_ports < <(primaries)
[ ${#primary_ports[@]} -eq $((NODES / 2)) ] || { echo "expected $((NODES / 2)) primaries" >&2; exit 1; }

# --- The targets -------------------------------------------------------------------------

upstream_url="redis-cluster://$(IFS=,; echo "${seeds[*]}")"
# The TTL guard on every key: every SET gets PX appended.
CONF_TTL="$CONF_GUARDS_OFF"'
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"'

declare -A ports
ports[direct]=${node_ports[0]}
wanted() { [[ " $TARGETS " == *" $1 "* ]]; }
if wanted respguard || wanted respguard--cluster; then
  start_respguard "ports[respguard]" "$CONF_GUARDS_OFF"
  ports[respguard--cluster]=${ports[respguard]}
fi
if wanted respguard+mux; then
  start_respguard "ports[respguard+mux]" "$CONF_GUARDS_OFF"'
[upstream]
connections = "multiplexed"'
fi
if wanted respguard+ttl || wanted respguard+ttl--cluster; then
  start_respguard "ports[respguard+ttl]" "$CONF_TTL"
  ports[respguard+ttl--cluster]=${ports[respguard+ttl]}
fi
# The redis-benchmark of Redis 7.0 refuses a cluster of one node ("Invalid cluster: 1
# node(s)."), which is what respguard presents (Valkey's benchmark dropped that check): the
# --cluster targets through respguard are then left out, and the note below the table says so.
one_node_refusal=""
if wanted respguard--cluster || wanted respguard+ttl--cluster; then
  port=${ports[respguard]:-${ports[respguard+ttl]}}
  if ! one_node_refusal=$(redis-benchmark --cluster -h 127.0.0.1 -p "$port" -n 1 -c 1 -t PING -q 2>&1); then
    one_node_refusal="redis-benchmark --cluster -h 127.0.0.1 -p <respguard> said: $(tr '\n' ' ' <<<"$one_node_refusal")"
  else
    one_node_refusal=""
  fi
fi
targets=()
for t in $TARGETS; do
  [ -n "${ports[$t]:-}" ] || { echo "unknown target $t" >&2; exit 1; }
  if [[ $t == respguard*--cluster && -n $one_node_refusal ]]; then continue; fi
  targets+=("$t")
done

# Whether TARGET runs redis-benchmark in cluster mode.
cluster_mode() { [ "$1" = direct ] || [[ $1 == *--cluster ]]; }
# Whether TARGET's proxy adds a TTL to every SET.
adds_ttl() { [[ $1 == respguard+ttl* ]]; }

# redis-benchmark's connection options for TARGET.
bench_args() {
  local args=(-h 127.0.0.1 -p "${ports[$1]}")
  if cluster_mode "$1"; then args+=(--cluster); fi
  if [ -n "$THREADS" ]; then args+=(--threads "$THREADS"); fi
  printf '%s\n' "${args[@]}"
}

# "req/s p50_ms" from redis-benchmark's CSV: the line after the header (cluster mode
# prints the node list before it).
parse_csv() {
  awk -F'","' '/^"test"/ { header = NR } header && NR == header + 1 {
    gsub(/"/, "", $0); split($0, f, ","); print f[2], f[5] }'
}

# The load of one run, redis-benchmark's output on standard output: TARGET TEST PIPELINE
# REQUESTS.
load() {
  local target=$1 test=$2 pipe=$3 requests=$4 args
  mapfile -t args < <(bench_args "$target")
  local common=("${args[@]}" -P "$pipe" -c "$CLIENTS" -n "$requests" -d "$SIZE" --csv)
  case "$test" in
    SET) redis-benchmark "${common[@]}" -r "$KEYSPACE" -t SET ;;
    GET)
      write_get_keys "$target" "${args[@]}" || return 1
      redis-benchmark "${common[@]}" -t GET ;;
    *) redis-benchmark "${common[@]}" -t "$test" ;;
  esac
}

# Write the keys TARGET's GET reads ($2...: its connection options): its SET without -r,
# each client once or more, until the cluster holds them all: one key per primary in
# cluster mode against the cluster itself (each client's key is tagged for its node's
# first slot), else one key. In cluster mode redis-benchmark's threads share the count of
# requests, so a short write can leave a node's clients without a turn: each try sends ten
# times more.
write_get_keys() {
  local target=$1 expected=1 requests=$((CLIENTS * 4))
  shift
  if [ "$target" = direct ]; then expected=${#primary_ports[@]}; fi
  for _ in 1 2 3 4; do
    redis-benchmark "$@" -c "$CLIENTS" -n "$requests" -d "$SIZE" -t SET -q >/dev/null || return 1
    [ "$(cluster_keys)" -eq "$expected" ] && return 0
    requests=$((requests * 10))
  done
  echo "$target: GET's keys: $(cluster_keys) in the cluster, $expected expected" >&2
  return 1
}

# The keys in the cluster: the primaries' DBSIZE summed.
cluster_keys() {
  local port sum=0
  for port in "${primary_ports[@]}"; do sum=$((sum + $(redis-cli -p "$port" dbsize))); done
  echo "$sum"
}

# The primaries holding keys, as "port:keys" words.
key_spread() {
  local port out=()
  for port in "${primary_ports[@]}"; do out+=("$port:$(redis-cli -p "$port" dbsize)"); done
  echo "${out[*]}"
}

# Fails when, after TARGET's SET row, the cluster holds no key, or a +ttl target left one
# without an expiry (a random key of each primary holding any is checked).
check_set_row() {
  local target=$1 port key
  if [ "$(cluster_keys)" -eq 0 ]; then
    echo "$target SET: no key in the cluster" >&2
    return 1
  fi
  adds_ttl "$target" || return 0
  for port in "${primary_ports[@]}"; do
    key=$(redis-cli -p "$port" randomkey)
    [ -n "$key" ] || continue
    if [ "$(redis-cli -p "$port" pttl "$key")" -le 0 ]; then
      echo "$target SET: $key on $port has no TTL" >&2
      return 1
    fi
  done
}

# measure TARGET TEST PIPELINE REQUESTS -> "req/s p50_ms"
measure() {
  local result port
  result=$(load "$@" 2>"$work/load.err" | tee "$work/load.out" | parse_csv) || true
  if [ -z "$result" ] || grep -qi error "$work/load.err" "$work/load.out"; then
    echo "measure $*: no result, or errors:" >&2
    cat "$work/load.out" "$work/load.err" >&2
    return 1
  fi
  if [ "$2" = SET ]; then check_set_row "$1" || return 1; fi
  echo "$1 $2 P$3 n=$4: $result (req/s, p50 ms); keys per primary: $(key_spread)" >>"$work/spread.log"
  for port in "${primary_ports[@]}"; do redis-cli -p "$port" flushall >/dev/null; done
  echo "$result"
}

# Requests for a run of about SECONDS_PER_RUN at RATE (req/s), at least REQUESTS.
requests_for() {
  awk -v r="$1" -v s="$SECONDS_PER_RUN" -v n="$REQUESTS" 'BEGIN { m = int(r * s); print (m > n) ? m : n }'
}

# One row: a calibration run per target, then each target ROUNDS times in rotating order;
# sets med_rps, med_p50 and row_n (each target's requests per run).
declare -A med_rps med_p50 row_n
row() {
  local test=$1 pipe=$2 round i n=${#targets[@]} t r p50 result
  declare -A all_rps=() all_p50=()
  local calibration
  for t in "${targets[@]}"; do
    calibration=$REQUESTS
    while :; do
      result=$(measure "$t" "$test" "$pipe" "$calibration") || exit 1
      read -r r p50 <<<"$result"
      awk -v n="$calibration" -v r="$r" 'BEGIN { exit !(n / r < 1.5) }' || break
      calibration=$((calibration * 4))
    done
    row_n[$t]=$(requests_for "$r")
  done
  for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      t=${targets[$(( (i + round) % n ))]}
      result=$(measure "$t" "$test" "$pipe" "${row_n[$t]}") || exit 1
      read -r r p50 <<<"$result"
      all_rps[$t]+="$r "; all_p50[$t]+="$p50 "
    done
  done
  med_rps=(); med_p50=()
  for t in "${targets[@]}"; do
    med_rps[$t]=$(tr ' ' '\n' <<<"${all_rps[$t]}" | grep . | median)
    med_p50[$t]=$(tr ' ' '\n' <<<"${all_p50[$t]}" | grep . | median)
  done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "| test | pipeline | clients | value | target | req/s | vs direct cluster | p50 ms | run s |"
echo "|---|---|---|---|---|---|---|---|---|"
for pipe in $PIPELINES; do
  for test in $TESTS; do
    row "$test" "$pipe"
    for t in "${targets[@]}"; do
      printf '| %s | %s | %s | %s B | %s | %.0f | %s | %.3f | %.2f |\n' "$test" "$pipe" "$CLIENTS" \
        "$SIZE" "$t" "${med_rps[$t]}" "$(ratio "${med_rps[$t]}" "${med_rps[direct]:-0}")" \
        "${med_p50[$t]}" "$(awk -v n="${row_n[$t]}" -v r="${med_rps[$t]}" 'BEGIN { print n / r }')"
    done
  done
done

# The cluster must still be the one the run started with: no failover under the load.
if [ "$(primaries | sort)" != "$(printf '%s\n' "${primary_ports[@]}" | sort)" ]; then
  echo "warning: the primaries changed during the run (a failover): $(primaries | tr '\n' ' ')" >&2
fi
if [ -n "$one_node_refusal" ]; then
  echo
  echo "Not measured: the --cluster targets through respguard ($one_node_refusal)."
fi
echo
echo "Each run (the first of each target in a row is its calibration), with the keys per"
echo "primary it left (port:keys), before the flush:"
sed 's/^/    /' "$work/spread.log"
echo
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f3); cluster of $NODES nodes ($((NODES / 2)) primaries, 1 replica each)"
echo "command: ROUNDS=$ROUNDS REQUESTS=$REQUESTS SECONDS_PER_RUN=$SECONDS_PER_RUN TESTS=\"$TESTS\" PIPELINES=\"$PIPELINES\" CLIENTS=$CLIENTS SIZE=$SIZE KEYSPACE=$KEYSPACE THREADS=\"$THREADS\" TARGETS=\"$TARGETS\" scripts/bench-cluster.sh"
