#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md with a release build of `cai` and `cai-bench`, writing
# one JSON report per target to target/bench/ (or $CARGO_TARGET_DIR/bench/) and a table per
# run to stdout. Needs RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379), as scripts/test.sh
# sets up; uses Redis database 10.
#
#   scripts/bench.sh              # targets 1 to 4 and 10 (the million-sample runs take a while)
#   scripts/bench.sh overhead     # one target: overhead | model-bound | million | resume | adaptive
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p cai -p cai-bench
target="${CARGO_TARGET_DIR:-target}"
bench="$target/release/cai-bench"
out="$target/bench"
mkdir -p "$out"
work="$out/work"
only="${1:-all}"

run() { # name, then cai-bench arguments
  local name=$1
  shift
  if [[ $only == all || $name == "$only"* ]]; then
    echo "== $name: cai-bench $*"
    "$bench" --work-dir "$work" --json "$out/$name.json" "$@"
  fi
}

# 1. Runner overhead: mock model, zero latency, pairwise with swap.
run overhead-embedded --pipeline pairwise --samples 300000 --mode embedded --workers 2 --concurrency 256 --runs 3
run overhead-embedded-tasks256 --pipeline pairwise --samples 300000 --mode embedded --workers 2 --concurrency 256 --task-size 256 --runs 3
run overhead-distributed --pipeline pairwise --samples 100000 --mode distributed --workers 2 --concurrency 256 --runs 3
# 2. Model-bound efficiency: the OpenAI-compatible test server, 100 ms per call, 256 calls in
#    flight (the model's max_concurrency), 320 samples in flight so no slot idles while a task
#    waits for its slowest sample.
run model-bound --pipeline pairwise --samples 40000 --mode embedded --workers 1 --model server --latency-ms 100 --concurrency 256 --samples-in-flight 320 --runs 3
# 3. A million critique-revise samples through RabbitMQ and Redis, mock model at 20 ms a call.
run million --pipeline critique-revise --revisions 1 --samples 1000000 --mode distributed --workers 2 --latency-ms 20 --concurrency 256
# 4. Resume a million-sample job at 90 %: first task, and no model call made twice.
run resume --pipeline critique-revise --revisions 1 --samples 1000000 --mode distributed --workers 2 --concurrency 256 --resume-at 0.9 --count-calls
# 10. max_concurrency = "auto" against a server that takes 16 calls at once (20 ms a call) and
#     answers a 429 to the rest: a hand-set max_concurrency = 16, then "auto" with its defaults.
run adaptive-fixed16 --pipeline pairwise --samples 20000 --mode embedded --workers 1 --model server --latency-ms 20 --server-capacity 16 --concurrency 16 --runs 3
run adaptive-auto --pipeline pairwise --samples 20000 --mode embedded --workers 1 --model server --latency-ms 20 --server-capacity 16 --auto --concurrency 256 --runs 3
