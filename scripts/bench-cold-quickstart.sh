#!/usr/bin/env bash
# Times the quick start as a newcomer meets it: the committed tree cloned into a fresh folder,
# built into an empty target directory (crates already downloaded into ~/.cargo are reused:
# downloads are not timed), then the two quick start jobs. Prints the build's wall time, the
# jobs' wall times, their total, and the 12 crates whose compilation took longest (from
# `cargo build --timings`; the HTML report is kept in target/bench/cold-build/).
# Usage: scripts/bench-cold-quickstart.sh    (about 10 minutes on 2 cores; run on an idle machine)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="$("$root/scripts/fetch-model.sh")"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git clone --quiet --no-hardlinks "$root" "$scratch/cai"
cd "$scratch/cai"
mkdir -p models && ln -s "$model" models/

now() { date +%s.%N; }
start=$(now)
CARGO_TARGET_DIR="$scratch/target" cargo build --locked --bin cai --timings --quiet
built=$(now)
"$scratch/target/debug/cai" run examples/quickstart.toml 2>/dev/null
"$scratch/target/debug/cai" run examples/quickstart-pairwise.toml 2>/dev/null
done_at=$(now)

report="$root/target/bench/cold-build"
mkdir -p "$report"
cp "$scratch"/target/cargo-timings/cargo-timing-*.html "$report/"
python3 - "$start" "$built" "$done_at" "$scratch"/target/cargo-timings/cargo-timing-*.html <<'PY'
import json, re, sys
start, built, done = map(float, sys.argv[1:4])
units = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);\n", open(sys.argv[4]).read(), re.S).group(1))
cpu = sum(u["duration"] for u in units)
print(f"cold build: {built - start:.0f} s wall, {cpu:.0f} s of compilation over {len(units)} units")
print(f"quick start jobs: {done - built:.0f} s; build + jobs: {(done - start) / 60:.1f} min")
for u in sorted(units, key=lambda u: -u["duration"])[:12]:
    print(f"  {u['duration']:6.1f} s  {u['name']} {u['version']}")
PY
