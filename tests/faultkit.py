"""Real faults for the store-and-forward tests: a TCP proxy that cuts, stalls, blackholes and throttles,
loop-mounted ext4 images for disk-full, and the accounting check every fault test ends with.

Nothing is simulated inside the agent: the proxy sits on the wire between the agent and a real
Mosquitto, the disk really fills up (ext4 on a loop device, so fsync is real), the agent is a real
process that really gets SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.devbroker import free_port

# ---------------------------------------------------------------- TCP proxy


class FaultProxy:
    """An asyncio TCP proxy ``127.0.0.1:<port>`` -> ``upstream`` running in its own thread.

    Modes (switch at any time, they apply to live connections too):

    * ``pass``: forward everything.
    * ``stall``: hold bytes (nothing forwarded, connections stay open); ``pass`` releases them in order.
    * ``blackhole``: swallow bytes in both directions, connections stay open (a dead peer, a pulled
      cable behind a NAT): only keepalive logic can notice.
    * ``refuse``: new connections are closed at once.

    ``throttle(bps)`` limits each direction to ``bps`` bytes/s (``None`` = no limit); ``cut()`` closes
    every live connection now (both sides see a reset/EOF).
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.mode = "pass"
        self.bps: float | None = None
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._released = asyncio.Event()

    # public API (any thread)
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def set_mode(self, mode: str) -> None:
        if mode not in ("pass", "stall", "blackhole", "refuse"):
            raise ValueError(f"unknown proxy mode {mode!r}")
        self.mode = mode
        if mode == "pass":
            self._loop.call_soon_threadsafe(self._released.set)
        else:
            self._loop.call_soon_threadsafe(self._released.clear)

    def throttle(self, bps: float | None) -> None:
        self.bps = bps

    def cut(self) -> int:
        """Close every live connection; returns how many were open."""
        return int(self._call(self._cut()))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # internals (proxy thread)
    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._released.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> int:
        n = len(self._writers)
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                sock = w.get_extra_info("socket")
                if sock is not None:  # RST, not a polite FIN: like a NAT box dropping the flow
                    import socket
                    import struct

                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.close()
        self._writers.clear()
        return n

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            cw.close()
            return
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            cw.close()
            return
        self.connections += 1
        self._writers.update((cw, uw))
        await asyncio.gather(self._pump(cr, uw), self._pump(ur, cw), return_exceptions=True)
        for w in (cw, uw):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await r.read(4096)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue
                while self.mode == "stall":
                    await self._released.wait()
                if self.mode == "blackhole":
                    continue
                w.write(data)
                await w.drain()
                if self.bps:
                    await asyncio.sleep(len(data) / self.bps)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()


# ---------------------------------------------------------------- loop-mounted ext4


def loop_mount_unavailable() -> str | None:
    """Why a loop-mounted ext4 cannot be used here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (mount -o loop)"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists() \
                and not Path(f"/sbin/{tool}").exists():
            return f"{tool} is not installed (apt-get install e2fsprogs mount)"
    return None


@contextlib.contextmanager
def loop_ext4(workdir: Path, size_mb: int = 16) -> Iterator[Path]:
    """A fresh ext4 file system of ``size_mb`` MiB on a loop device, mounted; unmounted afterwards.

    Raises RuntimeError (with the tool's message) if it cannot be made, so callers can skip.
    """
    img = workdir / "disk.img"
    mnt = workdir / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    for cmd in (["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], ["mount", "-o", "loop", str(img), str(mnt)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")
    try:
        yield mnt
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            img.unlink()


def fill_disk(directory: Path, leave: int = 0, name: str = "filler.bin") -> Path:
    """Fill the file system holding ``directory`` with a filler file until only ``leave`` bytes are free.

    Returns the filler's path (it may not exist if the disk was already too full to create it)."""
    filler = directory / name
    chunk = b"\0" * (256 * 1024)
    try:
        f = open(filler, "ab", buffering=0)  # noqa: SIM115  (unbuffered: nothing left to fail at close)
    except OSError:
        return filler
    with contextlib.suppress(OSError), f:
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[: max(4096, min(len(chunk), free - leave))])
                os.fsync(f.fileno())
            except OSError:
                break
    return filler


def disk_free(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


# ---------------------------------------------------------------- accounting


@dataclass
class Accounting:
    """What the subscriber saw, checked against the promise: every seq 1..last_seq arrived at least once
    or is covered by an events/dropped range."""

    last_seq: int
    received: set[int] = field(default_factory=set)
    duplicates: int = 0
    dropped: dict[str, set[int]] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)  # seqs that arrived with two different readings

    @property
    def covered(self) -> set[int]:
        out: set[int] = set()
        for s in self.dropped.values():
            out |= s
        return out

    def summary(self) -> str:
        d = {k: len(v) for k, v in self.dropped.items()}
        return (f"last_seq={self.last_seq} received={len(self.received)} duplicates={self.duplicates} "
                f"dropped={d} missing={len(self.missing)} {self.missing[:20]} "
                f"conflicts={len(self.conflicts)} {self.conflicts[:20]}")


def account(envelopes: Iterable[dict[str, Any]], last_seq: int, dev: str | None = None) -> Accounting:
    acc = Accounting(last_seq)
    seen: dict[int, int] = {}
    content: dict[int, str] = {}
    conflicts: set[int] = set()
    for e in envelopes:
        if dev is not None and e.get("dev") != dev:
            continue
        seq = e.get("seq")
        if not isinstance(seq, int):
            continue
        seen[seq] = seen.get(seq, 0) + 1
        what = repr((e.get("stream"), e.get("ts"), e.get("data")))
        if content.setdefault(seq, what) != what:
            conflicts.add(seq)
        if e.get("stream") == "events/dropped":
            data = e.get("data") or {}
            bucket = acc.dropped.setdefault(str(data.get("reason")), set())
            for a, b in data.get("ranges", []):
                bucket.update(range(int(a), int(b) + 1))
    acc.conflicts = sorted(conflicts)
    acc.received = set(seen)
    acc.duplicates = sum(n - 1 for n in seen.values())
    covered = acc.covered
    acc.missing = [s for s in range(1, last_seq + 1) if s not in acc.received and s not in covered]
    print("accounting:", acc.summary())
    return acc
