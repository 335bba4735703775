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

# Start the release respguard in front of the Redis on $redis_port with the configuration
# text $2, on a free port stored in the variable named $1; $3 is the log level (warn).
# Not for a $(...) subshell: the process must be recorded in this shell's pids for cleanup.
start_respguard() {
  local port conf
  port=$(free_port)
  conf="$work/respguard-$port.toml"
  printf '%s\n' "$2" > "$conf"
  ./target/release/respguard --config "$conf" --listen "127.0.0.1:$port" \
    --upstream "redis://127.0.0.1:$redis_port" --admin-listen "" --log-level "${3:-warn}" &
  pids+=($!)
  wait_port "$port"
  printf -v "$1" '%s' "$port"
}

# The median of the numbers on standard input, one per line.
median() { sort -g | awk '{ a[NR]=$1 } END { print a[int((NR+1)/2)] }'; }
