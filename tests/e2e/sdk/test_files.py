"""capsule.files via the official SDK (separate Python 3.13 process) against real wrenn-cp + wrenn-agent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tests.e2e.sdk.conftest import SdkRunner


@pytest.fixture(scope="module")
def capsule_id(sdk: SdkRunner) -> Iterator[str]:
    cid: str = sdk("lifecycle", "create")["id"]
    yield cid
    assert sdk("lifecycle", "destroy", capsule=cid)["status"] == "stopped"


def test_write_read_overwrite_list(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("files", "write_read_list", capsule=capsule_id)
    assert r["missing_code"] == "not_found" and r["depth4"] > r["depth2"] > r["entries"] >= 3
    assert r["types"] == ["directory", "file"]


def test_exists_make_dir_remove(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("files", "exists_mkdir_remove", capsule=capsule_id)
    assert (r["file"], r["dir"], r["missing_file"], r["missing_parent"]) == (True, True, False, False)
    assert r["mkdir_entry"] == "/home/wrenn-user/made/x/y" and r["remove_missing"] == "not_found"


def test_binary_roundtrip(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("files", "binary_roundtrip", capsule=capsule_id)
    assert r["sha256"] == hashlib.sha256(bytes(range(256)) * 4096).hexdigest()


def test_50mb_streamed_upload_and_download(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("files", "stream_50mb", capsule=capsule_id, timeout=240)
    assert r["bytes"] == 50 * 1024 * 1024 and len(r["sha256"]) == 64
    print(f"50 MB: upload {r['upload_s']} s, download {r['download_s']} s ({r['download_chunks']} chunks)")
