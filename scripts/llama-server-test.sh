#!/usr/bin/env bash
# End-to-end run of cai's `openai` backend against a real OpenAI-compatible server: the llama.cpp
# server of llama-cpp-python (`python -m llama_cpp.server`) serving SmolLM2-135M-Instruct (the
# quick start's GGUF, see scripts/fetch-model.sh) on 127.0.0.1.
#
# 1. Installs `llama-cpp-python[server]` into a virtualenv in target/llama-venv, once: pip builds
#    llama.cpp from source, about 10 minutes on 2 cores. Later runs reuse it.
# 2. Fetches the model and builds `cai`.
# 3. Starts the server on a free port and waits (at most 120 s) until /v1/models answers.
# 4. Runs two jobs on 4 red-team prompts in a temporary directory: critique → revise (1 round) on
#    the completions endpoint, then pairwise labels on two generated answers (chat endpoint,
#    judged from the top log-probabilities), and checks that every sample produced a row.
# 5. Stops the server on exit, whatever happened.
#
# Not part of scripts/test.sh or CI (the first run's build is too slow). Needs python3 with venv
# and pip, curl, and a Rust toolchain.
#
# Usage: scripts/llama-server-test.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
prompts="$root/data/hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl"
samples=4

work="$(mktemp -d)"
# shellcheck source=scripts/llama-server.sh
. "$root/scripts/llama-server.sh"
cleanup() {
    stop_llama_server
    rm -rf "$work"
}
trap cleanup EXIT

ensure_llama_server
model="$(scripts/fetch-model.sh)"
cargo build --locked --bin cai
[ -f "$prompts" ] || { echo "error: $prompts is missing" >&2; exit 1; }

start_llama_server "$model" --logits_all true
url="$llama_url"
echo "llama.cpp server (llama-cpp-python $(llama_server_version)) answers on $url" >&2

cat >"$work/critique-revise.toml" <<EOF
name = "llama-server-sl"
pipeline = "critique-revise"
seed = 42
output = "out-sl"

[input]
path = "$prompts"
prompt = "prompt"
id = "source_line"
limit = $samples

[constitution]
path = "$root/constitutions/default.toml"
few_shot = false

[critique_revise]
model = "policy"
revisions = 1
sft = "final"

[models.policy]
backend = "openai"
url = "$url"
model = "smollm2"
endpoint = "completions"
max_concurrency = 1
temperature = 0.7
max_tokens = 64
timeout_s = 300
EOF

cat >"$work/pairwise.toml" <<EOF
name = "llama-server-pairwise"
pipeline = "pairwise"
seed = 42
output = "out-pairwise"

[input]
path = "$prompts"
prompt = "prompt"
id = "source_line"
limit = $samples

[constitution]
path = "$root/constitutions/default.toml"

[pairwise]
judge = "policy"
generate = { model = "policy", n = 2 }
principles_per_label = 1
swap = true
mode = "logprobs"

[models.policy]
backend = "openai"
url = "$url"
model = "smollm2"
endpoint = "chat"
max_concurrency = 1
temperature = 0.8
max_tokens = 64
timeout_s = 300
EOF

target/debug/cai run "$work/critique-revise.toml"
target/debug/cai run "$work/pairwise.toml"

python3 - "$work" "$samples" <<'PY'
import json, pathlib, sys

work, samples = pathlib.Path(sys.argv[1]), int(sys.argv[2])

def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

problems = []
for out, file in [("out-sl", "sft.jsonl"), ("out-pairwise", "preferences.jsonl")]:
    done, failed = rows(work / out / file), rows(work / out / "failed.jsonl")
    for row in failed:
        problems.append(f"{out}: sample {row['id']} failed: {row['reason']}")
    if len(done) != samples:
        problems.append(f"{out}/{file}: {len(done)} rows, expected {samples}")
    manifest = json.loads((work / out / "manifest.json").read_text())
    if not manifest["complete"]:
        problems.append(f"{out}: the manifest says the job is not complete")
    print(f"{out}/{file}: {len(done)} rows, {len(failed)} failed; "
          f"{manifest['model_calls']} calls, {manifest['tokens_in']} tokens in, "
          f"{manifest['tokens_out']} out")
for row in rows(work / "out-sl" / "sft.jsonl"):
    if not row["messages"][-1]["content"].strip():
        problems.append(f"out-sl: sample {row['id']} has an empty revision")
labels = [row["p_chosen"] for row in rows(work / "out-pairwise" / "preferences.jsonl")]
if not all(0.0 <= p <= 1.0 for p in labels):
    problems.append(f"labels outside [0, 1]: {labels}")
print("p_chosen:", ", ".join(f"{p:.3f}" for p in labels))
if problems:
    sys.exit("FAILED:\n  " + "\n  ".join(problems))
print("llama.cpp server end-to-end run: OK")
PY
