#!/usr/bin/env bash
# Regenerate the Python protobuf stubs for hostagent.v1 from app/hostagent/proto/hostagent.proto.
#
# Tool: the protoc bundled in the `grpcio-tools` wheel (PyPI; listed in the `dev` extra), so no
# system protoc is needed. Only message classes are generated (--python_out/--pyi_out): the Connect
# client and server are hand-written in app/hostagent/connect.py, so no gRPC service stubs are used.
# The generated files are committed; run this after editing the .proto and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" -m grpc_tools.protoc \
  --proto_path=app/hostagent/proto \
  --python_out=app/hostagent/proto \
  --pyi_out=app/hostagent/proto \
  app/hostagent/proto/hostagent.proto
"$PY" -m grpc_tools.protoc --version
