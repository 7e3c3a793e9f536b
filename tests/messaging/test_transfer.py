"""ChunkAssembler: real files on disk, restarts simulated by a new assembler on the same directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edge_agent.errors import EdgeAgentError
from edge_agent.transfer import ChunkAssembler, TransferError, file_sha256


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def test_out_of_order_duplicates_and_restart(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    parts = chunks(data, 1024)
    n = len(parts)
    asm = ChunkAssembler(tmp_path / "t")
    st = asm.add("dev-1:7", 3, n, parts[3], sha, name="model.tflite")
    assert not st.complete and 3 not in st.missing and len(st.missing) == n - 1
    asm.add("dev-1:7", 3, n, parts[3], sha, name="model.tflite")  # duplicate: harmless
    for i in (0, 1, 2):
        asm.add("dev-1:7", i, n, parts[i], sha)
    # "restart": a fresh assembler over the same directory knows what is there
    asm2 = ChunkAssembler(tmp_path / "t")
    st = asm2.state("dev-1:7")
    assert st is not None and st.missing == list(range(4, n)) and st.received == 4
    assert [s.transfer_id for s in asm2.incomplete()] == ["dev-1:7"]
    for i in range(4, n):
        st = asm2.add("dev-1:7", i, n, parts[i], sha)
    assert st.complete and st.missing == [] and st.size == len(data)
    assert st.path.name == "model.tflite" and st.path.read_bytes() == data
    assert file_sha256(st.path) == sha
    assert asm2.incomplete() == []
    again = asm2.add("dev-1:7", 5, n, parts[5], sha)  # late duplicate after completion
    assert again.complete and again.path == st.path


def test_sha_mismatch_discards_and_raises(tmp_path: Path) -> None:
    data = b"x" * 3000
    parts = chunks(data, 1024)
    sha = hashlib.sha256(b"something else").hexdigest()
    asm = ChunkAssembler(tmp_path)
    asm.add("t1", 0, 3, parts[0], sha)
    asm.add("t1", 1, 3, parts[1], sha)
    with pytest.raises(TransferError, match="sha256 mismatch") as ei:
        asm.add("t1", 2, 3, parts[2], sha)
    assert isinstance(ei.value, EdgeAgentError) and isinstance(ei.value, ValueError)
    assert asm.state("t1") is None  # partial data gone: the sender must send again


def test_empty_file(tmp_path: Path) -> None:
    sha = hashlib.sha256(b"").hexdigest()
    st = ChunkAssembler(tmp_path).add("e", 0, 1, b"", sha)
    assert st.complete and st.path.read_bytes() == b""


@pytest.mark.parametrize(("args", "match"), [
    (("../x", 0, 1, b"", "0" * 64), "bad transfer id"),
    (("a/b", 0, 1, b"", "0" * 64), "bad transfer id"),
    (("t", 1, 1, b"", "0" * 64), "chunk index must be in 0..0"),
    (("t", -1, 2, b"", "0" * 64), "chunk index"),
    (("t", 0, 0, b"", "0" * 64), "total must be"),
    (("t", 0, 1, "text", "0" * 64), "must be bytes"),
    (("t", 0, 1, b"", "XYZ"), "sha256 must be 64"),
])
def test_bad_input_is_refused_clearly(tmp_path: Path, args: tuple, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(TransferError, match=match):
        ChunkAssembler(tmp_path).add(*args)


def test_bad_name_and_inconsistent_chunks(tmp_path: Path) -> None:
    asm = ChunkAssembler(tmp_path)
    with pytest.raises(TransferError, match="bad file name"):
        asm.add("t", 0, 2, b"a", "0" * 64, name="../../etc/passwd")
    asm.add("t", 0, 2, b"a", "0" * 64)
    with pytest.raises(TransferError, match="the transfer started with 2"):
        asm.add("t", 1, 3, b"b", "0" * 64)


def test_prune_removes_stale_partial_transfers(tmp_path: Path) -> None:
    asm = ChunkAssembler(tmp_path)
    asm.add("old", 0, 2, b"a", "0" * 64)
    assert asm.prune(3600) == 0
    assert asm.prune(10, now=10**10) == 1
    assert asm.state("old") is None
