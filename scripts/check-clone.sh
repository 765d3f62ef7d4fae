#!/usr/bin/env bash
# Checks that the repository stands on its own: clones the committed tree into a fresh
# temporary folder with nothing beside it, then, with the `cai` binary already built in this
# checkout (CAI_BIN, default target/debug/cai), validates every shipped job file in the clone,
# runs the mock example there to completion, and fails if any tracked file names a path in
# the team's shared folder beside the checkout (which a user's clone does not have).
# The test model is linked into the clone when this checkout has it (the quick start examples
# name models/); scripts/test.sh runs this after the test suite.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cai="${CAI_BIN:-$root/target/debug/cai}"
[ -x "$cai" ] || { echo "error: $cai is missing: build cai first" >&2; exit 1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
clone="$scratch/cai"
git clone --quiet --no-hardlinks "$root" "$clone"
cd "$clone"

if git grep -n '\.\./shared'; then
    echo "error: the tracked files above name the shared folder, which a clone does not have" >&2
    exit 1
fi
if [ -d "$root/models" ]; then
    ln -s "$root/models" models
fi

for job in examples/*.toml deploy/jobs/*.toml; do
    status=0
    OPENAI_API_KEY=validate-calls-no-model "$cai" validate "$job" >"$scratch/validate.log" 2>&1 || status=$?
    # 1: the shipped data has lines the reader rejects (reported in the log), the job is fine.
    if [ "$status" -gt 1 ]; then
        cat "$scratch/validate.log" >&2
        echo "error: cai validate $job failed in a fresh clone (exit $status)" >&2
        exit 1
    fi
done
"$cai" run examples/mock-critique-revise.toml 2>"$scratch/run.log" || {
    cat "$scratch/run.log" >&2
    echo "error: the mock example did not run to completion in a fresh clone" >&2
    exit 1
}
grep -q '"complete": *true' out/mock-critique-revise/manifest.json || {
    echo "error: the mock example's manifest does not say complete" >&2
    exit 1
}
echo "fresh clone: every job file validates, the mock example completes, no path leaves the repository"
