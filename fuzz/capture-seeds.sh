#!/usr/bin/env bash
# Rebuild the fuzz seed corpus (fuzz/seeds/) from real traffic: redis-benchmark, redis-cli,
# redis-py (pipelines, transactions, pub/sub, scripts, RESP3), ioredis, and the job
# libraries' retry storms (Sidekiq, Celery, RQ, BullMQ, taskiq) are run against Redis
# through a recording relay, and what each connection sent and received becomes a seed.
# Needs what scripts/install-test-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"
relay_port=$(free_port)
python3 fuzz/record.py "$relay_port" "$redis_port" "$work/capture" &
pids+=($!)
wait_port "$relay_port"

redis-benchmark -p "$relay_port" -q -n 200 -c 2 -P 8 -d 100 >/dev/null
redis-benchmark -p "$relay_port" -q -n 50 -c 1 -d 2000 -t set,get,lpush,hset,lrange_100 >/dev/null
redis-cli -p "$relay_port" --no-raw <<'CMDS' >/dev/null
HELLO 3
SET session:1 abc EX 60
HSET user:1 name ada email ada@example.com
ZADD board 1 a 2 b
XADD events * kind click
EVAL "return redis.call('GET', KEYS[1])" 1 session:1
MULTI
INCR counter
EXPIRE counter 100
EXEC
CLIENT SETNAME seeds
SCAN 0 COUNT 10
CMDS
printf 'PING\r\nSET inline value\r\nGET inline\r\n' | redis-cli -p "$relay_port" --pipe >/dev/null 2>&1 || true
# The deepest reply Redis nests: a Lua table containing itself, about 8,000 arrays deep.
redis-cli -p "$relay_port" EVAL 'local a = {}; local b = {a}; a[1] = b; return a' 0 >/dev/null
python3 tests/clients/redis_py_scenario.py "$relay_port" 2 >/dev/null
python3 tests/clients/redis_py_scenario.py "$relay_port" 3 >/dev/null
node tests/clients/ioredis_scenario.js "$relay_port" >/dev/null
python3 tests/clients/storms/celery_storm.py "$relay_port" "$redis_port" >/dev/null
python3 tests/clients/storms/rq_storm.py "$relay_port" "$redis_port" >/dev/null
python3 tests/clients/storms/taskiq_storm.py "$relay_port" "$redis_port" >/dev/null
ruby tests/clients/storms/sidekiq_storm.rb "$relay_port" "$redis_port" >/dev/null
node tests/clients/storms/bullmq_storm.js "$relay_port" "$redis_port" >/dev/null

# Each connection's requests seed the request scanner (prefixed by the size of the pieces
# it is fed in: 1 byte and 64 bytes) and the guard pipeline; its replies seed the reply
# scanner. Files are named by content, so a rebuild only changes what changed.
sleep 1 # the relay writes its files as connections close
rm -rf fuzz/seeds
mkdir -p fuzz/seeds/request_scanner fuzz/seeds/reply_scanner fuzz/seeds/guard_pipeline
for f in "$work"/capture/*.requests; do
  [ -s "$f" ] || continue
  head -c 8192 "$f" > "$work/req"
  name=$(sha1sum < "$work/req" | cut -c1-16)
  cp "$work/req" "fuzz/seeds/guard_pipeline/$name"
  { printf '\x00'; cat "$work/req"; } > "fuzz/seeds/request_scanner/${name}-1"
  { printf '\x3f'; cat "$work/req"; } > "fuzz/seeds/request_scanner/${name}-64"
done
for f in "$work"/capture/*.replies; do
  [ -s "$f" ] || continue
  head -c 8192 "$f" > "$work/rep"
  name=$(sha1sum < "$work/rep" | cut -c1-16)
  cp "$work/rep" "fuzz/seeds/reply_scanner/$name"
done
for d in fuzz/seeds/*; do echo "$d: $(ls "$d" | wc -l) files, $(du -sh "$d" | cut -f1)"; done
