# Shared by the scripts that start servers on this machine: a scratch directory and the
# processes to stop on exit, free ports, and waiting for a port to open.
# Source it: `. "$(dirname "$0")/lib.sh"`.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A TCP port on 127.0.0.1 that nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait (up to 10 s) until something accepts connections on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}

# Start the release respguard in front of the Redis on $redis_port (or of $upstream_url, when
# set) with the configuration text $2, on a free port stored in the variable named $1; $3 is
# the log level (warn).
# Not for a $(...) subshell: the process must be recorded in this shell's pids for cleanup.
start_respguard() {
  local port conf
  port=$(free_port)
  conf="$work/respguard-$port.toml"
  printf '%s\n' "$2" > "$conf"
  ./target/release/respguard --config "$conf" --listen "127.0.0.1:$port" \
    --upstream "${upstream_url:-redis://127.0.0.1:$redis_port}" --admin-listen "" --log-level "${3:-warn}" &
  pids+=($!)
  wait_port "$port"
  printf -v "$1" '%s' "$port"
}

# Write redis-benchmark's SET key (the key its GET reads) with a value of $1 bytes into the
# Redis on $redis_port: a GET of a missing key would measure a null reply.
write_get_key() {
  redis-benchmark -h 127.0.0.1 -p "$redis_port" -t set -c 1 -n 1 -d "$1" -q >/dev/null
}

# The median of the numbers on standard input, one per line.
median() { sort -g | awk '{ a[NR]=$1 } END { print a[int((NR+1)/2)] }'; }

# respguard configurations the benchmarks compare.
# No guards at all: the proxy alone (shedding is on by default, so turned off here).
CONF_GUARDS_OFF='
[guards.shed]
soft_enter = 0.0
hard_enter = 0.0'
# The monitor polling every 250 ms with both shedding levels and a priority rule set; Redis
# has no maxmemory, so pressure is measured against a 64 GiB budget and nothing is shed.
CONF_PRESSURE='
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
priority = "low"'
# CONF_PRESSURE plus redis-benchmark's list (LPUSH's `mylist`) followed as a queue, its
# depth limit far away.
CONF_QUEUE="$CONF_PRESSURE"'
[[guards.queue.rules]]
pattern = "mylist"
max_depth = 1000000000'
# Every guard configured and checking redis-benchmark's commands, none refusing:
# - shed and queue: CONF_QUEUE;
# - TTL: every SET gets PX appended, every HSET a hidden PEXPIRE ... NX (LPUSH is left
#   alone: the list is a job queue, which a TTL would lose);
# - size: every write's values and element counts checked;
# - enqueue: every LPUSH fingerprinted by a generic rule, in observe mode (redis-benchmark
#   pushes the same payload each time: enforcing would drop all but the first push and
#   turn the LPUSH rows into a different workload).
CONF_ALL_GUARDS="$CONF_QUEUE"'
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
[[guards.size.rules]]
pattern = "*"
max_value = "1MiB"
max_elements = 100000
[[guards.enqueue.rules]]
preset = "generic"
name = "bench"
pattern = "mylist"
commands = ["LPUSH"]
format = "raw"
action = "observe"'

# Write twemproxy's configuration to $1: listening on port $2, one connection to the Redis
# on port $3 (as the benchmarks run it).
write_nutcracker_config() {
  cat > "$1" <<CFG
bench:
  listen: 127.0.0.1:$2
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  server_connections: 1
  servers:
    - 127.0.0.1:$3:1
CFG
}

# Write HAProxy's configuration to $1: TCP mode, listening on port $2, in front of the Redis
# on port $3 (as the benchmarks run it).
write_haproxy_config() {
  cat > "$1" <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen redis
  bind 127.0.0.1:$2
  server redis 127.0.0.1:$3
CFG
}
