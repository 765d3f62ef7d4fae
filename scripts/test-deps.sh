#!/usr/bin/env bash
# Installs what the report, dataset-card and TLS tests need on a fresh Debian machine, each only
# when it is missing: openssl (the TLS tests make their certificates), Debian's chromium (the
# report is rendered in a real headless browser) and
# Hugging Face's `datasets` library in a virtual environment (CAI_TEST_PYENV, default
# target/pyenv), with which the card's configs are loaded. Prints the environment's python, which
# the tests read from CAI_TEST_PYTHON. Run as root (apt-get); scripts/test.sh calls it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

updated=""
apt_install() {
    if [ -z "$updated" ]; then
        apt-get update -qq >&2
        updated=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

if ! command -v openssl >/dev/null; then
    echo "installing openssl (the TLS tests make their certificates with it)" >&2
    apt_install openssl
fi

if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium (for the report tests)" >&2
    apt_install chromium
fi

venv="${CAI_TEST_PYENV:-$root/target/pyenv}"
python="$venv/bin/python"
if ! "$python" -c 'import datasets' 2>/dev/null; then
    echo "installing the datasets library into $venv (for the dataset card test)" >&2
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    python3 -m venv "$venv" >&2
    "$python" -m pip install --quiet --disable-pip-version-check datasets >&2
fi
echo "$python"
