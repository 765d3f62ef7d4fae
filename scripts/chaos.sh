#!/usr/bin/env bash
# The chaos soak (not part of CI: it runs for minutes): a distributed job of 100,000 samples on
# this machine's RabbitMQ and a private Redis, three workers, and a fault every 5-20 s (a worker
# or the coordinator SIGKILLed and restarted, RabbitMQ restarted, Redis stopped for 10-30 s),
# then checks exactly-once output and counts repeated model calls. See scripts/chaos.py for the
# options (e.g. scripts/chaos.sh --samples 20000); the report goes to target/chaos/chaos-report.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh
cargo build --release --locked --bin cai
target="${CARGO_TARGET_DIR:-target}"
rm -rf "$target/chaos"
exec python3 scripts/chaos.py --cai "$target/release/cai" --workdir "$target/chaos" \
    --constitution constitutions/default.toml "$@"
