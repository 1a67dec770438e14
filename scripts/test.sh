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
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile -p no:cacheprovider "$@"
