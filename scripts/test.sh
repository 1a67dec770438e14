#!/usr/bin/env bash
# Install everything the suite needs, then run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh dev
if [ -x scripts/install-system-deps.sh ] || [ -f scripts/install-system-deps.sh ]; then
  sh scripts/install-system-deps.sh
fi
export PYTHONUNBUFFERED=1
workers="${WRENN_TEST_WORKERS:-2}"
# Capsule processes run as an unprivileged host uid that must traverse the test dirs, and
# pytest resets /tmp/pytest-of-<user> to 0700 at every session start: use our own base dir.
basetemp="/var/tmp/wrenn-tests-$(pwd | sha256sum | cut -c1-12)"
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile -p no:cacheprovider --basetemp "$basetemp" "$@"
