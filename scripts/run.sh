#!/usr/bin/env bash
# The whole platform with one command: control plane + embedded Postgres/Redis + a local host agent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh
exec .venv/bin/wrenn-cp serve "$@"
