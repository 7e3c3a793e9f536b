"""Chunked, sha256-verified, resumable file transfer: the receiving side.

A file travels as numbered chunks (each an ordinary outbox message, so delivery is already
at-least-once and survives restarts of either side). This module only has to assemble them::

    add(tid, i, n, data, sha256) --> <dir>/<tid>/meta.json        (total, sha256, name; first chunk)
                                     <dir>/<tid>/chunks/<i>        (written to a temp name, fsynced, renamed)
    all n chunks present        --> concatenate + hash --> <dir>/<tid>/<name>   (renamed into place)
                                     chunks removed, meta.json says complete

Why chunks are separate files rather than offsets in one sparse file: the chunk size is the sender's
choice and the last chunk is short, so an index alone does not give an offset; a file per chunk also
makes "which chunks do I have" a directory listing that is exactly what survived a crash (a chunk is
visible only after its rename). Duplicates (MQTT QoS 1 redelivery) are harmless: a chunk already on
disk is not rewritten, and chunks of a completed transfer return the completed state.

On a sha256 mismatch the partial state is removed (which chunk was bad cannot be known) and
:class:`ChecksumMismatch` (a :class:`TransferError`) is raised; the sender must send the file again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import EdgeAgentError
from edge_agent.fsutil import atomic_write

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]{0,254}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_CHUNKS = 1_000_000
META = "meta.json"
#: Names a received file cannot have: the transfer directory's own entries.
RESERVED_NAMES = (META, "chunks")


def file_name_problem(name: object) -> str | None:
    """Why a received file could not be called ``name`` (the sender checks the same), or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"bad file name {name!r} (letters, digits and _ . + @ -, first a letter or digit, no '/')"
    if name in RESERVED_NAMES:
        return f"file name {name!r} is reserved ({', '.join(RESERVED_NAMES)}); give another name"
    return None


class TransferError(EdgeAgentError, ValueError):
    """A chunk or a transfer is invalid (bad id, inconsistent total, sha256 mismatch...)."""


class ChecksumMismatch(TransferError):
    """All chunks arrived but the file's sha256 is not the one announced; the partial data is gone."""


@dataclass
class TransferState:
    transfer_id: str
    total: int
    sha256: str
    path: Path
    complete: bool = False
    missing: list[int] = field(default_factory=list)
    received: int = 0
    size: int = 0


class ChunkAssembler:
    """Assembles transfers under ``dir`` (one sub-directory per transfer id). Not thread-safe by itself:
    callers serialise ``add`` per transfer (the messaging service holds its lock)."""

    def __init__(self, dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.dir = Path(dir)
        self.fsync = fsync

    # ------------------------------------------------------------------ public API
    def add(self, transfer_id: str, index: int, total: int, data: bytes, sha256: str,
            *, name: str | None = None) -> TransferState:
        """Store chunk ``index`` (0-based) of ``total``; assemble and verify once all are present."""
        self._check(transfer_id, index, total, data, sha256, name)
        tdir = self.dir / transfer_id
        meta = self._read_meta(tdir)
        if meta is None:
            meta = {"total": total, "sha256": sha256, "name": name or "data", "created": time.time(),
                    "complete": False}
            (tdir / "chunks").mkdir(parents=True, exist_ok=True)
            self._write_atomic(tdir / META, json.dumps(meta).encode())
        elif meta["total"] != total or meta["sha256"] != sha256:
            raise TransferError(f"transfer {transfer_id}: chunk {index} says {total} chunks / sha256 "
                                f"{sha256[:12]}..., the transfer started with {meta['total']} / "
                                f"{meta['sha256'][:12]}...")
        if meta["complete"]:
            return self._state(transfer_id, meta)
        chunk = tdir / "chunks" / str(index)
        if not chunk.exists():
            self._write_atomic(chunk, data)
        st = self._state(transfer_id, meta)
        if not st.missing:
            return self._assemble(transfer_id, tdir, meta)
        return st

    def state(self, transfer_id: str) -> TransferState | None:
        """The state of a transfer (after a restart, too), or None if unknown."""
        if not _ID.fullmatch(transfer_id):
            raise TransferError(f"bad transfer id {transfer_id!r}")
        meta = self._read_meta(self.dir / transfer_id)
        return None if meta is None else self._state(transfer_id, meta)

    def incomplete(self) -> list[TransferState]:
        """Transfers still waiting for chunks (e.g. to report what is missing after a restart)."""
        out = []
        for d in sorted(self.dir.iterdir()) if self.dir.exists() else []:
            meta = self._read_meta(d) if d.is_dir() and _ID.fullmatch(d.name) else None
            if meta is not None and not meta["complete"]:
                out.append(self._state(d.name, meta))
        return out

    def discard(self, transfer_id: str) -> None:
        if not _ID.fullmatch(transfer_id):
            raise TransferError(f"bad transfer id {transfer_id!r}")
        shutil.rmtree(self.dir / transfer_id, ignore_errors=True)

    def prune(self, max_age: float, now: float | None = None) -> int:
        """Remove incomplete transfers started more than ``max_age`` seconds ago; return how many."""
        now = time.time() if now is None else now
        n = 0
        for st in self.incomplete():
            meta = self._read_meta(self.dir / st.transfer_id)
            if meta is not None and now - float(meta.get("created", now)) > max_age:
                self.discard(st.transfer_id)
                n += 1
        return n

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check(transfer_id: str, index: int, total: int, data: bytes, sha256: str, name: str | None) -> None:
        if not isinstance(transfer_id, str) or not _ID.fullmatch(transfer_id):
            raise TransferError(f"bad transfer id {transfer_id!r}: letters, digits and _ . : @ -, "
                                "1-128 characters")
        if not isinstance(total, int) or isinstance(total, bool) or not 1 <= total <= MAX_CHUNKS:
            raise TransferError(f"transfer {transfer_id}: total must be an integer in 1..{MAX_CHUNKS}, "
                                f"got {total!r}")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < total:
            raise TransferError(f"transfer {transfer_id}: chunk index must be in 0..{total - 1}, got {index!r}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TransferError(f"transfer {transfer_id}: chunk data must be bytes, got {type(data).__name__}")
        if not isinstance(sha256, str) or not _SHA.fullmatch(sha256):
            raise TransferError(f"transfer {transfer_id}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
        problem = None if name is None else file_name_problem(name)
        if problem is not None:
            raise TransferError(f"transfer {transfer_id}: {problem}")

    @staticmethod
    def _read_meta(tdir: Path) -> dict[str, object] | None:
        try:
            meta = json.loads((tdir / META).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and "total" in meta and "sha256" in meta else None

    def _state(self, transfer_id: str, meta: dict[str, object]) -> TransferState:
        total = int(meta["total"])  # type: ignore[call-overload]
        tdir = self.dir / transfer_id
        path = tdir / str(meta.get("name") or "data")
        if meta.get("complete"):
            return TransferState(transfer_id, total, str(meta["sha256"]), path, True, [], total,
                                 int(meta.get("size", 0)))  # type: ignore[call-overload]
        have = set()
        size = 0
        try:
            with os.scandir(tdir / "chunks") as it:
                for e in it:
                    if e.name.isdigit():
                        have.add(int(e.name))
                        size += e.stat().st_size
        except FileNotFoundError:
            pass
        missing = [i for i in range(total) if i not in have]
        return TransferState(transfer_id, total, str(meta["sha256"]), path, False, missing, len(have), size)

    def _write_atomic(self, path: Path, data: bytes | bytearray | memoryview) -> None:
        atomic_write(path, data, fsync=self.fsync)

    def _assemble(self, transfer_id: str, tdir: Path, meta: dict[str, object]) -> TransferState:
        total = int(meta["total"])  # type: ignore[call-overload]
        path = tdir / str(meta.get("name") or "data")
        tmp = path.with_name(f".{path.name}.tmp")
        h = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as out:
            for i in range(total):
                with open(tdir / "chunks" / str(i), "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
                        size += len(block)
            if self.fsync:
                out.flush()
                os.fsync(out.fileno())
        if h.hexdigest() != meta["sha256"]:
            shutil.rmtree(tdir, ignore_errors=True)
            raise ChecksumMismatch(f"transfer {transfer_id}: sha256 mismatch: got {h.hexdigest()}, "
                                f"expected {meta['sha256']}; partial data discarded, send again")
        os.replace(tmp, path)
        meta = {**meta, "complete": True, "size": size, "completed": time.time()}
        self._write_atomic(tdir / META, json.dumps(meta).encode())
        shutil.rmtree(tdir / "chunks", ignore_errors=True)
        return TransferState(transfer_id, total, str(meta["sha256"]), path, True, [], total, size)


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
