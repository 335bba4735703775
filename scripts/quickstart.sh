#!/usr/bin/env bash
# Quick start: builds respguard, starts a Redis and respguard in front of it on free
# ports, and walks through a session that shows what the proxy does. Stops everything at
# the end. Needs a Debian/Ubuntu machine with Rust; installs redis-server if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi
echo "== building respguard (release)"
cargo build --release --quiet

. scripts/lib.sh
step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

redis_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --maxmemory 16mb --maxmemory-policy noeviction --logfile "$work/redis.log" &
redis_pid=$!; pids+=($redis_pid)
wait_port "$redis_port"
cat > "$work/respguard.toml" <<'CFG'
[[guards.size.rules]]
pattern = "blob:*"
max_value = "1MiB"

[[guards.ttl.rules]]
pattern = "session:*"
ttl = "none"
[[guards.ttl.rules]]
pattern = "cache:*"
ttl = "1h"
max_ttl = "1d"

[monitor]
interval = "100ms"
[guards.shed]
soft_enter = 0.5
soft_exit = 0.45
hard_enter = 0.8
hard_exit = 0.75
[[guards.shed.rules]]
pattern = "analytics:*"
priority = "low"
[[guards.shed.rules]]
pattern = "session:*"
priority = "critical"

[[guards.queue.rules]]
pattern = "queue:emails"
max_depth = 5

[[guards.enqueue.rules]]
preset = "sidekiq"
limit = 1
window = "60s"
action = "reject"

[[guards.fail_open.rules]]
pattern = "cache:*"
CFG
./target/release/respguard --config "$work/respguard.toml" --listen "127.0.0.1:$proxy_port" \
  --upstream "redis://127.0.0.1:$redis_port" --admin-listen "127.0.0.1:$admin_port" \
  --log-level info 2>"$work/respguard.log" &
pids+=($!)
wait_port "$proxy_port"
step "Redis on port $redis_port, respguard on port $proxy_port (admin on $admin_port)"

step "The application talks to respguard exactly as it talked to Redis"
show redis-cli -p "$proxy_port" SET greeting "hello through respguard"
show redis-cli -p "$proxy_port" GET greeting
show redis-cli -p "$proxy_port" -3 HELLO 3
printf 'MULTI\nINCR visits\nINCR visits\nEXEC\n' | { echo '$ printf "MULTI\nINCR visits\nINCR visits\nEXEC\n" | redis-cli'; redis-cli -p "$proxy_port"; }

step "Guards: rules from $work/respguard.toml"
sed 's/^/    /' "$work/respguard.toml"
step "Default TTL: a cache key written without an expiry gets the rule's (asked of Redis directly)"
show redis-cli -p "$proxy_port" SET cache:user:42 '{"name":"Ada"}'
show redis-cli -p "$redis_port" TTL cache:user:42
show redis-cli -p "$proxy_port" HSET cache:profile:42 plan pro
show redis-cli -p "$redis_port" TTL cache:profile:42
echo "(session:* is exempt)"
show redis-cli -p "$proxy_port" SET session:abc token
show redis-cli -p "$redis_port" TTL session:abc
echo "(an expiry beyond max_ttl = 1d is lowered to it)"
show redis-cli -p "$proxy_port" SET cache:forever v EX 31536000
show redis-cli -p "$redis_port" TTL cache:forever

step "Oversized value: refused before it reaches Redis, and the connection goes on"
python3 - "$proxy_port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
value = b"x" * (5 * 1024 * 1024)
s.sendall(b"*3\r\n$3\r\nSET\r\n$10\r\nblob:video\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(value), value))
replies = b""
while replies.count(b"\r\n") < 2:
    replies += s.recv(4096)
for line in replies.decode().splitlines():
    print("  " + line)
PY
show redis-cli -p "$redis_port" EXISTS blob:video

step "Queue backlog: queue:emails may hold at most 5 jobs"
for i in 1 2 3 4 5 6; do show redis-cli -p "$proxy_port" RPUSH queue:emails "job-$i"; done
echo "(a worker drains two jobs; within a poll the proxy reads the depth again)"
show redis-cli -p "$redis_port" LPOP queue:emails 2
for _ in $(seq 1 50); do
  r=$(redis-cli -p "$proxy_port" RPUSH queue:emails job-7)
  case "$r" in ERR*) sleep 0.05 ;; *) echo "\$ redis-cli RPUSH queue:emails job-7"; echo "$r"; break ;; esac
done

step "Duplicate jobs: one client may enqueue the same Sidekiq job once a minute"
job() { printf '{"retry":true,"queue":"default","class":"HardJob","args":[%s],"jid":"%s","enqueued_at":%s}' "$1" "$2" "$(date +%s.%N)"; }
show redis-cli -p "$proxy_port" LPUSH queue:default "$(job 42 b1946ac92492d2347c6235b4)"
echo "(the same job again, as a retry loop would: new jid, new timestamp)"
show redis-cli -p "$proxy_port" LPUSH queue:default "$(job 42 591785b794601e212b260e25)"
echo "(another job, and a re-push of the first one's jid, as Sidekiq's retry does, pass)"
show redis-cli -p "$proxy_port" LPUSH queue:default "$(job 43 bd8f4ef9e0cc1a4f0d4ea2b2)"
show redis-cli -p "$proxy_port" LPUSH queue:default "$(job 42 b1946ac92492d2347c6235b4)"

step "Memory pressure: Redis has maxmemory 16mb; fill it through the proxy"
python3 - "$proxy_port" "$redis_port" <<'PY'
import socket, sys, time
proxy, redis = int(sys.argv[1]), int(sys.argv[2])
def conn(port):
    s = socket.create_connection(("127.0.0.1", port)); return s, s.makefile("rb")
def call(c, *args):
    s, f = c
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = f.readline()
    if line[:1] == b"$" and line[1:2] != b"-":
        data = f.read(int(line[1:]) + 2); return data[:-2].decode(errors="replace")
    return line.decode().strip()
p, r = conn(proxy), conn(redis)
def pressure():
    info = call(r, b"INFO", b"memory")
    used = int(info.split("used_memory:")[1].split("\r\n")[0])
    return 100 * used / (16 << 20)
value = b"v" * 100_000
i = 0
while pressure() < 55:
    call(p, b"SET", b"data:%d" % i, value); i += 1
time.sleep(0.3)
print(f"  Redis memory at {pressure():.0f}%: soft shedding (low-priority writes refused)")
print("  SET analytics:click ->", call(p, b"SET", b"analytics:click", b"1"))
print("  SET data:more      ->", call(p, b"SET", b"data:more", b"1"))
while True:
    reply = call(p, b"SET", b"data:%d" % i, value); i += 1
    if reply.startswith("-OOM"):
        break
print(f"  Redis memory at {pressure():.0f}%: hard shedding (every memory-growing write refused)")
print("  SET data:next      ->", reply)
print("  SET session:abc    ->", call(p, b"SET", b"session:abc", b"critical keys still pass"))
print("  GET data:0         ->", call(p, b"GET", b"data:0")[:20] + "...")
print("  DEL data:0..N      ->", sum(int(call(p, b"DEL", b"data:%d" % k)[1:]) for k in range(i)), "keys deleted")
time.sleep(0.3)
print(f"  Redis memory at {pressure():.0f}%: back to normal")
print("  SET analytics:click ->", call(p, b"SET", b"analytics:click", b"1"))
PY

step "A pipeline of 10,000 commands in one write"
for i in $(seq 1 10000); do printf 'INCR pipelined\r\n'; done | redis-cli -p "$proxy_port" --pipe
show redis-cli -p "$proxy_port" GET pipelined

step "Malformed input gets Redis's own protocol error, and the connection is closed"
exec 3<>/dev/tcp/127.0.0.1/"$proxy_port"
printf '*1\r\n$-7\r\n' >&3
echo "reply: $(head -c 200 <&3 | tr -d '\r')"
exec 3<&-

step "Readiness and metrics (http://127.0.0.1:$admin_port)"
show ./target/release/respguard health-probe "127.0.0.1:$admin_port" --path /readyz && echo "/readyz: ready"
python3 - "$admin_port" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
shown = ("respguard_guard_decisions_total", "respguard_enqueues_total", "respguard_commands_total",
         "respguard_command_duration_seconds_count", "respguard_client_connections ",
         "respguard_upstream_memory_pressure_ratio", "respguard_shedding_level")
for line in body.splitlines():
    if line.startswith(shown):
        print("  " + line)
PY

step "Operators ask the proxy itself: RESPGUARD STATUS (also at /status)"
redis-cli -p "$proxy_port" RESPGUARD STATUS | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("  config hash", s["config"]["hash"], "generation", s["config"]["generation"])
print("  shedding level:", s["memory"]["shedding_level"], " clients:", s["clients"]["connected"])
print("  clients refused most:", s["top_refused_clients"][:3])'

step "Hot reload: blob:* values now limited to 1KiB; RESPGUARD RELOAD (or SIGHUP), no restart"
sed -i 's/max_value = "1MiB"/max_value = "1KiB"/' "$work/respguard.toml"
show redis-cli -p "$proxy_port" RESPGUARD RELOAD
echo "\$ redis-cli SET blob:avatar <2 KiB>"
head -c 2048 /dev/zero | tr '\0' 'x' | redis-cli -p "$proxy_port" -x SET blob:avatar
echo '(an invalid file is refused, and the rules in force stay)'
printf '[[guards.size.rules]]\npattern = "img:*"\nmax_value = "a lot"\n' >> "$work/respguard.toml"
show redis-cli -p "$proxy_port" RESPGUARD RELOAD

step "Redis goes down: every command fails at once with an error that says why"
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
show redis-cli -p "$proxy_port" GET greeting || true
echo "(cache:* keys are fail-open: answered as an empty cache, so the application falls back to its database)"
show redis-cli -p "$proxy_port" GET cache:user:42
show redis-cli -p "$proxy_port" SET cache:user:42 '{"name":"Ada"}'
start=$(date +%s%N)
redis-cli -p "$proxy_port" PING >/dev/null || true
echo "(answered in $(( ($(date +%s%N) - start) / 1000000 )) ms, not after a timeout)"

step "Redis comes back on the same port: the proxy reconnects on its own"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis2.log" &
pids+=($!)
wait_port "$redis_port"
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$proxy_port" PING 2>/dev/null)" = "PONG" ] && break
  sleep 0.05
done
show redis-cli -p "$proxy_port" PING

step "done: respguard's log"
cat "$work/respguard.log"
echo
echo "Run it yourself: ./target/release/respguard --upstream redis://127.0.0.1:6379 --listen 127.0.0.1:6380"
echo "All settings: config.example.toml"
