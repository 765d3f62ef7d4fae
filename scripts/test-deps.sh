#!/usr/bin/env bash
# Installs what the report and dataset-card tests need on a fresh Debian machine, each only when
# it is missing: Debian's chromium (the report is rendered in a real headless browser) and
# Hugging Face's `datasets` library in a virtual environment under target/pyenv (the card's
# configs are loaded with it). Prints the environment's python, which the tests read from
# CAI_TEST_PYTHON. Run as root (apt-get); scripts/test.sh calls it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium (for the report tests)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
fi

venv="${CAI_TEST_PYENV:-$root/target/pyenv}"
python="$venv/bin/python"
if ! "$python" -c 'import datasets' 2>/dev/null; then
    echo "installing the datasets library into $venv (for the dataset card test)" >&2
    python3 -m venv "$venv" >&2
    "$python" -m pip install --quiet --disable-pip-version-check datasets >&2
fi
echo "$python"
