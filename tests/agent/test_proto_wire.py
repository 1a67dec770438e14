"""hostagent.v1 stubs against the wire spec (hostagent-wire.md §3.4, §4, §5)."""

from __future__ import annotations

import json
import struct

from app.hostagent.proto import hostagent_pb2 as pb

SID = "cl-12vqjrnxk8whv3i8qi6qgrlz4"

# Streaming kinds per §4; everything else is unary.
SERVER_STREAMING = {"ExecStream", "ReadFileStream", "PtyAttach", "ConnectProcess"}
CLIENT_STREAMING = {"WriteFileStream"}


def envelope(flags: int, payload: bytes) -> bytes:
    return bytes([flags]) + struct.pack(">I", len(payload)) + payload


def test_exec_stream_request_bytes_match_spec() -> None:
    msg = pb.ExecStreamRequest(sandbox_id=SID, cmd="/bin/sh", args=["-c", "echo hi"])
    expected = b"\x0a\x1c" + SID.encode() + b"\x12\x07/bin/sh" + b"\x1a\x02-c" + b"\x1a\x07echo hi"
    assert len(expected) == 52
    assert msg.SerializeToString() == expected
    body = envelope(0, msg.SerializeToString())
    assert body[:5] == bytes.fromhex("0000000034")
    decoded = pb.ExecStreamRequest.FromString(body[5:])
    assert decoded == msg


def test_exec_stream_response_bytes_match_spec() -> None:
    start = pb.ExecStreamResponse(start=pb.ExecStreamStart(pid=42))
    data = pb.ExecStreamResponse(data=pb.ExecStreamData(stdout=b"hi\n"))
    end = pb.ExecStreamResponse(end=pb.ExecStreamEnd())
    assert start.SerializeToString() == bytes.fromhex("0a02082a")
    assert data.SerializeToString() == b"\x12\x05\x0a\x03hi\n"
    # An empty oneof member is still present on the wire.
    assert end.SerializeToString() == b"\x1a\x00"
    assert pb.ExecStreamResponse.FromString(b"\x1a\x00").WhichOneof("event") == "end"
    assert pb.ExecStreamResponse.FromString(bytes.fromhex("0a02082a")).start.pid == 42
    eos = envelope(2, b"{}")
    assert eos == b"\x02\x00\x00\x00\x02{}"
    assert json.loads(eos[5:]) == {}


def test_service_has_30_rpcs_with_spec_kinds() -> None:
    svc = pb.DESCRIPTOR.services_by_name["HostAgentService"]
    assert svc.full_name == "hostagent.v1.HostAgentService"
    assert len(svc.methods) == 30
    for m in svc.methods:
        assert m.input_type.full_name == f"hostagent.v1.{m.name}Request", m.name
        assert m.output_type.full_name == f"hostagent.v1.{m.name}Response", m.name
        assert m.client_streaming == (m.name in CLIENT_STREAMING), m.name
        assert m.server_streaming == (m.name in SERVER_STREAMING), m.name
    assert svc.methods_by_name["Exec"].input_type.name == "ExecRequest"
    assert svc.methods_by_name["ConnectProcess"].output_type.name == "ConnectProcessResponse"


def test_create_sandbox_field_numbers() -> None:
    fields = {f.name: f.number for f in pb.CreateSandboxRequest.DESCRIPTOR.fields}
    assert fields == {
        "sandbox_id": 5,
        "template": 1,
        "vcpus": 2,
        "memory_mb": 3,
        "timeout_sec": 4,
        "disk_size_mb": 6,
        "team_id": 7,
        "template_id": 8,
        "default_user": 9,
        "default_env": 10,
    }


def test_oneofs_and_presence() -> None:
    oneofs = {
        "ExecStreamResponse": "event",
        "ConnectProcessResponse": "event",
        "PtyAttachResponse": "event",
        "ExecStreamData": "output",
        "WriteFileStreamRequest": "content",
        "KillProcessRequest": "selector",
        "ConnectProcessRequest": "selector",
    }
    for msg, name in oneofs.items():
        desc = pb.DESCRIPTOR.message_types_by_name[msg]
        real = [o.name for o in desc.oneofs if not o.name.startswith("_")]
        assert real == [name], msg
    entry = pb.FileEntry()
    assert not entry.HasField("symlink_target")
    entry.symlink_target = ""
    assert entry.HasField("symlink_target")
    # A selector with pid 0 is still "set" (oneof members have presence).
    kill = pb.KillProcessRequest.FromString(pb.KillProcessRequest(pid=0).SerializeToString())
    assert kill.WhichOneof("selector") == "pid"


def test_all_rpc_messages_defined() -> None:
    svc = pb.DESCRIPTOR.services_by_name["HostAgentService"]
    for m in svc.methods:
        assert m.input_type.name in pb.DESCRIPTOR.message_types_by_name
        assert m.output_type.name in pb.DESCRIPTOR.message_types_by_name
