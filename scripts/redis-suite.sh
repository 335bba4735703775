#!/usr/bin/env bash
# Redis 7.0's own test suite (../shared/redis-tests, external-server mode) through
# respguard. Each unit runs three times, each against a fresh redis-server: directly, through
# respguard with no guard at all ("off", scripts/redis-suite-off.toml), and through respguard with a rule for every
# guard in observe mode ("observe", scripts/redis-suite-observe.toml). It prints, per unit,
# the tests that pass directly but not through the proxy, and exits non-zero if any of them
# is not in the allow-list (scripts/redis-suite-allow.txt).
#
#   scripts/redis-suite.sh                               # every unit
#   scripts/redis-suite.sh unit/protocol unit/multi      # some units
#   REDIS_SUITE_UNITS="unit/protocol unit/multi" scripts/redis-suite.sh
#
# Environment: REDIS_SUITE_TIMEOUT (seconds per unit and run, 900), REDIS_SUITE_SRC (the
# suite, ../shared/redis-tests), REDIS_SUITE_OUT (where the logs stay, a temporary
# directory), REDIS_SUITE_MODES (the runs compared with the direct one, "off observe";
# "haproxy" runs the unit through haproxy in TCP mode, to tell a proxy defect from a race
# that any extra hop loses), REDIS_SUITE_SKIPFILE (runtest's --skipfile for every run: test
# names, or regular expressions starting with '/', to leave out).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

src=${REDIS_SUITE_SRC:-../shared/redis-tests}
unit_timeout=${REDIS_SUITE_TIMEOUT:-900}
modes="direct ${REDIS_SUITE_MODES:-off observe}"
out=${REDIS_SUITE_OUT:-$(mktemp -d /tmp/redis-suite.XXXXXX)}
allow=scripts/redis-suite-allow.txt
mkdir -p "$out"

install_deps() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if ! command -v tclsh >/dev/null || ! command -v redis-server >/dev/null \
    || ! command -v redis-benchmark >/dev/null; then
    $sudo apt-get update
    $sudo apt-get install -y tcl redis-server redis-tools
  fi
}

# Every unit file, as runtest names them, except those that only make sense against a
# server the suite starts itself.
all_units() {
  (cd "$src/tests" && ls unit/*.tcl unit/type/*.tcl) | sed 's/\.tcl$//' \
    | grep -vx -e unit/printver -e unit/shutdown -e unit/type/list-common
}

# The suite, copied where it may write, with the binaries it expects beside runtest.
prepare_suite() {
  suite="$work/redis-tests"
  cp -r "$src" "$suite"
  chmod -R u+w "$suite"
  mkdir -p "$suite/src"
  for b in redis-cli redis-server redis-benchmark; do ln -sf "$(command -v $b)" "$suite/src/$b"; done
}

# A fresh redis-server (the flags the suite needs, no persistence) in its own directory;
# sets redis_port and redis_pid.
start_redis() {
  redis_port=$(free_port)
  local dir="$work/redis-$redis_port"
  mkdir -p "$dir"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly no --enable-debug-command yes --enable-protected-configs yes \
    --enable-module-command yes --logfile "$dir/redis.log" >/dev/null 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis_port"
}

# Stops the processes of one run (they may already be gone: units shut Redis down).
stop_run() {
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# haproxy in TCP mode on port $1 in front of the Redis on $redis_port: another hop with no
# RESP logic, to tell a proxy defect from a timing race any extra hop loses.
start_haproxy() {
  local conf="$work/haproxy-$1.cfg"
  cat >"$conf" <<EOF
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend redis
  bind 127.0.0.1:$1
  default_backend redis
backend redis
  server redis 127.0.0.1:$redis_port
EOF
  haproxy -f "$conf" -db >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$1"
}

# Runs unit $1 in mode $2, its output in $out/<unit>.<mode>.log.
run_unit() {
  local unit=$1 mode=$2 port proxy_pid="" log started=$SECONDS
  log="$out/${unit//\//_}.$mode.log"
  start_redis
  port=$redis_port
  if [ "$mode" = haproxy ]; then
    port=$(free_port)
    start_haproxy "$port"
    proxy_pid=${pids[-1]}
  elif [ "$mode" != direct ]; then
    local conf="$work/respguard-$mode.toml" db=""
    cp "scripts/redis-suite-$mode.toml" "$conf"
    # REDIS_SUITE_MUX_DB=9 points the mux run at the suite's database, so its clients stay
    # on the shared connections (their SELECT 9 changes nothing); by default their SELECT
    # moves each to a connection of its own for good (see docs/compatibility.md).
    if [ "$mode" = mux ] && [ -n "${REDIS_SUITE_MUX_DB:-}" ]; then db="/$REDIS_SUITE_MUX_DB"; fi
    port=$(free_port)
    ./target/release/respguard --config "$conf" --listen "127.0.0.1:$port" \
      --upstream "redis://127.0.0.1:$redis_port$db" --admin-listen "" --log-level error \
      2>"$log.proxy" &
    proxy_pid=$!
    pids+=("$proxy_pid")
    wait_port "$port"
  fi
  # runtest listens for its test client on a port below --baseport: a random base keeps
  # runs on one machine from meeting there.
  # runtest reads one skip file: the caller's and the run's own (see mode_skips), joined.
  local skip=() skips="$work/skip-$mode.txt"
  cat ${REDIS_SUITE_SKIPFILE:+"$REDIS_SUITE_SKIPFILE"} /dev/null >"$skips"
  mode_skips "$mode" >>"$skips"
  if [ -s "$skips" ]; then skip=(--skipfile "$skips"); fi
  (cd "$suite" && timeout -k 10 "$unit_timeout" ./runtest --host 127.0.0.1 --port "$port" \
    --single "$unit" --clients 1 --baseport $((22000 + RANDOM % 90 * 100)) --portcount 64 \
    "${skip[@]}") >"$log" 2>&1 </dev/null \
    || echo "runtest exited with status $?" >>"$log"
  stop_run "$redis_pid" $proxy_pid
  pids=() # all stopped; none is left for the exit trap to signal
  echo $((SECONDS - started)) >"$log.seconds"
}

# The names of the tests of a log that passed ($2 = ok) or failed ($2 = err), one a line,
# sorted (a name may contain brackets and appear more than once).
tests_with() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | awk -v status="[$2]: " '
    index($0, status) == 1 {
      name = substr($0, length(status) + 1)
      if (status == "[ok]: ") sub(/ \([0-9]+ ms\)$/, "", name)
      else sub(/ in tests\/[^ ]*\.tcl$/, "", name)
      print name
    }' | LC_ALL=C sort
}

# The tests run $1 skips (scripts/redis-suite-<run>-skip.txt, one name a line). With
# REDIS_SUITE_MUX_DB set, the mux run skips those where a client waits for Redis's BUSY
# reply while another client's script runs: on a shared connection behind that script it
# cannot get one (see docs/compatibility.md).
mode_skips() {
  local file="scripts/redis-suite-$1-skip.txt"
  if [ "$1" = mux ] && [ -z "${REDIS_SUITE_MUX_DB:-}" ]; then return; fi
  if [ -f "$file" ]; then cat "$file"; fi
}

# The allow-listed tests of unit $1 in run $2, one name a line, sorted: lines naming the
# unit (every run) or unit@run (that run only).
allowed() {
  [ -f "$allow" ] || return 0
  { awk -v unit="$1" -v run="$1@$2" '$1 == unit || $1 == run { sub(/^[^ \t]+[ \t]+/, ""); print }' \
    "$allow"; mode_skips "$2"; } | LC_ALL=C sort -u
}

# Prints, for the run $2 of the unit whose files start with $1, the tests that passed
# directly but not in that run: each one that failed, by name, then how many the run never
# reached (the unit ended early: an exception, which is shown, or the timeout). Sets failed
# unless every one of them is allow-listed.
compare_run() {
  local base=$1 mode=$2 not_run
  tests_with "$base.$mode.log" err >"$base.$mode.err"
  LC_ALL=C comm -23 "$base.direct.ok" "$base.$mode.ok" >"$base.$mode.lost"
  grep -xF -f "$base.$mode.allowed" "$base.$mode.lost" | sed "s/^/    $mode: allowed: /" \
    | tee -a "$summary" || true
  grep -vxF -f "$base.$mode.allowed" "$base.$mode.lost" >"$base.$mode.unexplained" || true
  [ -s "$base.$mode.unexplained" ] && failed=1
  LC_ALL=C comm -12 "$base.$mode.unexplained" "$base.$mode.err" \
    | sed "s/^/    $mode: FAILS THROUGH THE PROXY: /" | tee -a "$summary"
  not_run=$(LC_ALL=C comm -23 "$base.$mode.unexplained" "$base.$mode.err" | wc -l)
  if [ "$not_run" -gt 0 ]; then
    echo "    $mode: $not_run more never ran: $(ended_by "$base.$mode.log")" | tee -a "$summary"
  fi
}

# Why a unit's run ended before its last test: the exception's first line, or the timeout.
ended_by() {
  local exception
  exception=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 '^\[exception\]' || true)
  if [ -n "$exception" ]; then echo "$exception"
  elif grep -q 'The End' "$1"; then echo "the unit finished without them"
  else echo "the unit did not finish within ${unit_timeout}s ($(tail -n1 "$1"))"
  fi
}

install_deps
cargo build --release
prepare_suite
units=${*:-${REDIS_SUITE_UNITS:-$(all_units)}}
summary="$out/summary.txt"
failed=0
# Per unit: the tests passing in each run, and the seconds all its runs took.
printf '%-28s%s%9s\n' unit "$(for m in $modes; do printf '%9s' "$m"; done)" seconds | tee "$summary"
for unit in $units; do
  for mode in $modes; do
    run_unit "$unit" "$mode"
  done
  line=$(printf '%-28s' "$unit")
  base="$out/${unit//\//_}"
  seconds=0
  for mode in $modes; do
    tests_with "$base.$mode.log" ok >"$base.$mode.ok"
    line+=$(printf '%9s' "$(wc -l <"$base.$mode.ok")")
    seconds=$((seconds + $(cat "$base.$mode.log.seconds")))
  done
  echo "$line$(printf '%9s' "$seconds")" | tee -a "$summary"
  for mode in $modes; do
    allowed "$unit" "$mode" >"$base.$mode.allowed"
    [ "$mode" = direct ] || compare_run "$base" "$mode"
  done
done
echo "logs: $out"
if [ "$failed" -ne 0 ]; then
  echo "Some tests pass directly but fail through respguard (see above)." >&2
  exit 1
fi
