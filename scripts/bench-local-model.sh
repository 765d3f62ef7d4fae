#!/usr/bin/env bash
# Target 5 of BENCHMARKS.md: the `local` backend (candle, in-process) against the llama.cpp server
# (llama-cpp-python) on the same GGUF model, the same 2 threads and the same job, one call at a
# time, in one run of this script.
#
# Both runs are the critique → revise job of examples/quickstart.toml on the first N red-team
# prompts (chat prompts, max_tokens 64 unless MAX_TOKENS says otherwise), with `--concurrency 1 --task-size 1`, so each call's
# latency in traces.jsonl is its own. Prompt and generation rates come from a least-squares fit
# of latency = tokens_in / p + tokens_out / g + c over the calls of each run (c: per-call
# overhead). The llama.cpp server's own timings (its log's `prompt eval` / `eval` lines) are
# printed beside it.
#
# Needs llama-cpp-python[server] in target/llama-venv (scripts/llama-server-test.sh installs it;
# about 10 minutes to build on 2 cores).
#
# Usage: scripts/bench-local-model.sh [PROMPTS]   (default 12)
#   CAI_BIN=path    an already built release `cai` (skips the build)
#   MAX_TOKENS=n    tokens per answer (default 64; 1 measures prompt processing alone)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
prompts_file="$root/data/hh-rlhf/red-team-prompts/harmless-base_test_prompts.jsonl"
samples="${1:-12}"
max_tokens="${MAX_TOKENS:-64}"
threads=2

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
if [ -n "${CAI_BIN:-}" ]; then
    cai="$CAI_BIN" # an already built release binary
else
    cargo build --release --locked --bin cai
    cai="$root/target/release/cai"
fi

job() { # name, model table body
    cat >"$work/$1.toml" <<EOF
name = "bench-$1"
pipeline = "critique-revise"
seed = 42
output = "out-$1"

[input]
path = "$prompts_file"
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
temperature = 0.7
max_tokens = $max_tokens
max_concurrency = 1
$2
EOF
}

job local "backend = \"local\"
path = \"$model\"
threads = $threads"
CANDLE_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads \
    "$cai" run "$work/local.toml" --concurrency 1 --task-size 1

start_llama_server "$model" --n_threads "$threads" --n_threads_batch "$threads"
url="$llama_url"
job llama "backend = \"openai\"
url = \"$url\"
model = \"smollm2\"
endpoint = \"chat\"
timeout_s = 300"
"$cai" run "$work/llama.toml" --concurrency 1 --task-size 1

python3 - "$work" "$(llama_server_version)" <<'PY'
import json, pathlib, re, sys

work, version = pathlib.Path(sys.argv[1]), sys.argv[2]

def calls(out):
    for line in (work / out / "traces.jsonl").read_text().splitlines():
        for step in json.loads(line)["steps"]:
            if not step["cached"]:
                yield step["tokens_in"], step["tokens_out"], step["latency_ms"] / 1000

def solve(xs, ys):
    # Least squares through the normal equations (Gauss-Jordan); None when singular.
    k = len(xs[0])
    m = [[sum(x[r] * x[c] for x in xs) for c in range(k)] for r in range(k)]
    v = [sum(x[r] * y for x, y in zip(xs, ys)) for r in range(k)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-9:
            return None
        m[col], m[pivot], v[col], v[pivot] = m[pivot], m[col], v[pivot], v[col]
        for r in range(k):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col])]
                v[r] -= f * v[col]
    return [v[i] / m[i][i] for i in range(k)]

def fit(rows):
    # latency = tokens_in / p + tokens_out / g + c; when every call generated as many tokens
    # (MAX_TOKENS=1), latency = tokens_in / p + c and g is not measured.
    ys = [t for *_, t in rows]
    full = solve([(i, o, 1.0) for i, o, _ in rows], ys)
    if full and full[1] > 0:
        return 1 / full[0], 1 / full[1], full[2]
    a, c = solve([(i, 1.0) for i, _, _ in rows], ys)
    return 1 / a, float("nan"), c

results = {}
for name, out in [("local (candle, in-process)", "out-local"), (f"llama.cpp server (llama-cpp-python {version})", "out-llama")]:
    rows = list(calls(out))
    p, g, c = fit(rows)
    total = sum(t for *_, t in rows)
    results[name] = (len(rows), sum(r[0] for r in rows), sum(r[1] for r in rows), total, p, g, c)

print("| backend | calls | prompt tokens | generated tokens | time (s) | prompt tok/s (fit) | generated tok/s (fit) | per-call overhead (s) | generated tok/s overall |")
print("|---|---|---|---|---|---|---|---|---|")
for name, (n, tin, tout, total, p, g, c) in results.items():
    print(f"| {name} | {n} | {tin} | {tout} | {total:.1f} | {p:.0f} | {g:.1f} | {c:.3f} | {tout / total:.1f} |")
(local, llama) = results.values()
print(f"\nratios local / llama.cpp: prompt (fit) {local[4] / llama[4]:.2f}, generation (fit) {local[5] / llama[5]:.2f}, "
      f"all tokens per second of the whole job {((local[1] + local[2]) / local[3]) / ((llama[1] + llama[2]) / llama[3]):.2f}")

log = (work / "server.log").read_text()
prompt = [(float(ms), int(n)) for ms, n in re.findall(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)]
gen = [(float(ms), int(n)) for ms, n in re.findall(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs", log)]
if prompt and gen and sum(ms for ms, _ in gen) > 0:
    print(f"llama.cpp's own timings over the run: prompt {sum(n for _, n in prompt) / sum(ms for ms, _ in prompt) * 1000:.0f} tok/s, "
          f"generation {sum(n for _, n in gen) / sum(ms for ms, _ in gen) * 1000:.1f} tok/s")
PY
