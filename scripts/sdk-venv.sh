#!/usr/bin/env bash
# Create ./.sdk-venv: the official Wrenn Python SDK (wrenn==0.3.0, Requires-Python >= 3.13) in its own
# virtualenv, used by tests/e2e/sdk as a separate client process. Idempotent and quick when up to date.
#
# Python 3.13 is found as $SDK_PYTHON, else under pyenv's versions dir (`pyenv root`, or $PYENV_ROOT, or
# ~/.pyenv; the bare `python3.13` shim fails on these machines), else a real python3.13 on PATH.
# No Python 3.13 -> exit 1 with a message (the e2e suite then fails; it does not skip).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SDK_VENV:-.sdk-venv}"
SDK_SPEC="wrenn==0.3.0"
EXTRA=""

is313() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 13) else 1)' >/dev/null 2>&1; }

find_python() {
  if [ -n "${SDK_PYTHON:-}" ]; then
    is313 "$SDK_PYTHON" && { echo "$SDK_PYTHON"; return 0; }
    echo "error: SDK_PYTHON=$SDK_PYTHON is not Python >= 3.13" >&2; return 1
  fi
  root="${PYENV_ROOT:-$HOME/.pyenv}"
  command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
  if [ -d "$root/versions" ]; then
    for v in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.1[3-9]\.[0-9]+$' | sort -V -r); do
      cand="$root/versions/$v/bin/python3"
      is313 "$cand" && { echo "$cand"; return 0; }
    done
  fi
  for cand in python3.13 python3.14 python3; do
    if command -v "$cand" >/dev/null 2>&1 && is313 "$(command -v "$cand")"; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}

stamp="$VENV/.installed-$(printf '%s %s' "$SDK_SPEC" "$EXTRA" | sha256sum | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && is313 "$VENV/bin/python"; then
  exit 0
fi
if ! PY="$(find_python)"; then
  echo "error: Python >= 3.13 not found (the wrenn SDK requires it). Install it, e.g. 'pyenv install 3.13.0'," >&2
  echo "       or point SDK_PYTHON at a python3.13 binary." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ] || ! is313 "$VENV/bin/python"; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $SDK_SPEC $EXTRA 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import wrenn, wrenn.code_runner, httpx_ws; print("wrenn SDK", wrenn.__version__ if hasattr(wrenn, "__version__") else "?")'
touch "$stamp"
