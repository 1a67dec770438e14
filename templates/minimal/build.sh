#!/bin/sh
# Build (or reuse from cache) the `minimal` capsule template: Debian bookworm via debootstrap.
# The recipe (package list, post-install script) lives in app/hostagent/templates.py; the result is
# cached in $WRENN_TEMPLATES_DIR or /var/cache/wrenn/templates/minimal/<recipe-hash>/rootfs (root).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
"$here/scripts/install-system-deps.sh"
py="$here/.venv/bin/python"
[ -x "$py" ] || py=python3
cd "$here" && exec "$py" -m app.hostagent.templates "$@"
