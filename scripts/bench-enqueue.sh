#!/usr/bin/env bash
# Enqueue throughput through respguard with the enqueue guard enforcing (Sidekiq preset,
# drop) against respguard with no guards and against Redis directly, in the same run, each
# round in a rotated order. Payloads are Sidekiq jobs from redis-benchmark:
#   new:   every job distinct (random arguments and jid): the path almost every enqueue takes;
#   dup:   the same job with a random jid: after the first, every one is dropped (LLEN).
# Prints a Markdown table of median ops/s and ratios.
# Usage: scripts/bench-enqueue.sh   (ROUNDS, REQUESTS, CLIENTS, PIPELINES override)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
PIPELINES=${PIPELINES:-"1 16"}

if ! command -v redis-benchmark >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release --quiet
. scripts/lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"

no_guards='
[guards.shed]
soft_enter = 0.0
hard_enter = 0.0'
start_respguard rg_port "$no_guards" error
start_respguard enq_port "$no_guards"'
[[guards.enqueue.rules]]
preset = "sidekiq"
action = "drop"' error

new_job='{"retry":true,"queue":"default","class":"HardJob","args":[__rand_int__,"sync"],"jid":"__rand_int__","created_at":1795332041.6812222,"enqueued_at":1795332041.6814175}'
dup_job='{"retry":true,"queue":"default","class":"HardJob","args":[42,"sync"],"jid":"__rand_int__","created_at":1795332041.6812222,"enqueued_at":1795332041.6814175}'

run() { # port pipeline payload -> ops/s
  redis-cli -p "$redis_port" DEL queue:default >/dev/null
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$CLIENTS" -n "$REQUESTS" -P "$2" -r 100000000 --csv \
    LPUSH queue:default "$3" 2>/dev/null | awk -F',' 'NR==2 { v = $(NF-6); gsub(/"/, "", v); print v }'
}

targets=("direct:$redis_port" "respguard:$rg_port" "respguard+enqueue:$enq_port")
echo "| jobs | pipeline | target | ops/s | vs direct | vs respguard |"
echo "|---|---|---|---|---|---|"
for kind in new dup; do
  payload=$new_job; [ "$kind" = dup ] && payload=$dup_job
  for pipe in $PIPELINES; do
    declare -A rps=()
    for round in $(seq 1 "$ROUNDS"); do
      n=${#targets[@]}
      for i in $(seq 0 $((n - 1))); do
        t=${targets[$(( (i + round) % n ))]}
        rps[${t%%:*}]+="$(run "${t##*:}" "$pipe" "$payload") "
      done
    done
    d=$(tr ' ' '\n' <<<"${rps[direct]}" | grep . | median)
    r=$(tr ' ' '\n' <<<"${rps[respguard]}" | grep . | median)
    for t in "${targets[@]}"; do
      name=${t%%:*}
      v=$(tr ' ' '\n' <<<"${rps[$name]}" | grep . | median)
      awk -v k="$kind" -v p="$pipe" -v n="$name" -v v="$v" -v d="$d" -v r="$r" \
        'BEGIN { printf "| %s | %s | %s | %.0f | %.2f | %.2f |\n", k, p, n, v, v/d, v/r }'
    done
    unset rps
  done
done
echo
echo "machine: $(nproc) cores; $(redis-server --version | cut -d' ' -f3); $ROUNDS rounds of $REQUESTS requests, $CLIENTS clients"
