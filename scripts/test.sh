#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetches the test model (once), installs what the report
# and dataset card tests need (scripts/test-deps.sh: chromium and the datasets library, each only
# when missing), makes sure RabbitMQ and Redis answer, checks formatting and lints, runs every
# test of the workspace, then checks that a fresh clone of the committed tree stands on its own
# (scripts/check-clone.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CAI_TEST_MODEL="$(scripts/fetch-model.sh)"
export CAI_TEST_MODEL
CAI_TEST_PYTHON="$(scripts/test-deps.sh)"
export CAI_TEST_PYTHON
scripts/services.sh

scripts/validate-deploy.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/check-clone.sh
