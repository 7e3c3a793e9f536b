"""Power cuts: the agent is SIGKILLed and every byte it did not fsync is thrown away with it.

The state directory lives on :mod:`tests.powercut_fs`, a FUSE file system that keeps every write since a
file's last fsync in memory and forgets it at the cut (LazyFS's "clear cache" fault). The first tests show
that file system is faithful on its own (synced bytes survive, unsynced are gone, reads before the cut see
them; SQLite WAL keeps every commit with synchronous=FULL, may lose the last ones with NORMAL but is never
corrupt). Then the real agent runs against a real broker, is cut at random moments and "boots" again from
what survived, with a new boot id (a private mount namespace binds a file over
/proc/sys/kernel/random/boot_id, so the agent reads it where it always does).

Pass criterion (issue 15): every seq 1..highest reached the subscriber or is inside an events/dropped
range; no seq arrives with two different readings; duplicates are counted; ``PRAGMA integrity_check`` is
ok, right after each cut (on a copy of what survived) and at the end.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.devbroker import DevBroker
from edge_agent.outbox import read_stats
from tests.faultkit import FaultProxy
from tests.faults.common import final_check, long_only, outbox_file
from tests.helpers import AgentProcess, Collector, sensors, unique, write_config
from tests.powercut_fs import PowerCutFS, unavailable

pytestmark = pytest.mark.root


@pytest.fixture
def cutfs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing dir, mount point); skipped where FUSE cannot run, except in CI, where that fails."""
    why = unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"power-cut file system unavailable in CI: {why}")
        pytest.skip(why)
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    yield backing, mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fsync_write(path: Path, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_write(path: Path, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the file system on its own


def test_fs_keeps_what_was_synced_and_loses_the_rest(cutfs: tuple[Path, Path]) -> None:
    backing, mnt = cutfs
    fs = PowerCutFS(backing, mnt, namespace="at_once")
    try:
        a, b, c, d = mnt / "a", mnt / "b", mnt / "c", mnt / "d"
        fsync_write(a, b"A" * 5000)
        plain_write(a, b"B" * 3000, 5000)          # grows the file, not synced
        plain_write(a, b"b" * 10, 100)             # overwrites synced bytes, not synced
        assert a.read_bytes() == b"A" * 100 + b"b" * 10 + b"A" * 4890 + b"B" * 3000  # reads see it all
        assert a.stat().st_size == 8000
        plain_write(b, b"new file, never synced")
        fsync_write(c, b"C" * 9000)
        os.truncate(c, 10)                          # a truncation is content too: volatile
        assert c.read_bytes() == b"C" * 10
        fsync_write(d, b"D" * 100)
        os.rename(d, mnt / "d2")                    # namespace operations are durable at once
        with open(mnt / "m", "w+b") as f:           # shared mmap works (SQLite's -shm)
            f.truncate(8192)
            mm = mmap.mmap(f.fileno(), 8192)
            mm[10:15] = b"hello"
            assert (mnt / "m").read_bytes()[10:15] == b"hello"
            mm.close()
        lost = fs.unsynced()
        assert lost["files"] >= 3 and lost["bytes"] > 0, lost
        report = fs.cut()
        assert report["lost"]["files"] >= 3, report
        # what the "disk" holds now
        assert (backing / "a").read_bytes() == b"A" * 5000
        assert (backing / "b").read_bytes() == b""
        assert (backing / "c").read_bytes() == b"C" * 9000
        assert (backing / "d2").read_bytes() == b"D" * 100 and not (backing / "d").exists()
        # remounted: the same, and a clean unmount writes everything
        fs = PowerCutFS(backing, mnt, namespace="at_once")
        assert (mnt / "a").read_bytes() == b"A" * 5000
        plain_write(mnt / "e", b"E" * 100)
        os.truncate(mnt / "a", 4096 + 7)
        plain_write(mnt / "a", b"z", 9000)          # grows again past the truncation: a hole of zeros
        assert (mnt / "a").read_bytes() == b"A" * 4103 + b"\0" * (9000 - 4103) + b"z"
    finally:
        fs.unmount()
    assert (backing / "e").read_bytes() == b"E" * 100
    assert (backing / "a").read_bytes() == b"A" * 4103 + b"\0" * (9000 - 4103) + b"z"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_fs_journal_undoes_namespace_operations_not_committed(cutfs: tuple[Path, Path]) -> None:
    """The default: a name operation lasts once any fsync (of a file or a directory) followed it."""
    backing, mnt = cutfs
    fs = PowerCutFS(backing, mnt)
    fsync_write(mnt / "kept", b"K")                  # created and synced: committed
    fsync_write(mnt / "target", b"old")
    fsync_write(mnt / "gone", b"G")
    fsync_write(mnt / "tmp1", b"new1")               # the atomic-write pattern, with its directory fsync
    os.replace(mnt / "tmp1", mnt / "target1")
    fsync_dir(mnt)
    os.mkdir(mnt / "sub")
    fsync_write(mnt / "tmp", b"new")                 # the pattern without it: the rename is not committed
    os.replace(mnt / "tmp", mnt / "target")
    os.unlink(mnt / "gone")
    plain_write(mnt / "new", b"never synced")
    assert (mnt / "target").read_bytes() == b"new" and not (mnt / "gone").exists()
    report = fs.cut()
    assert report["undone"] == 3, report             # rename, unlink, create (newest first)
    assert (backing / "kept").read_bytes() == b"K"
    assert (backing / "target1").read_bytes() == b"new1" and not (backing / "tmp1").exists()
    assert (backing / "sub").is_dir()                # committed by the fsync of tmp
    assert (backing / "target").read_bytes() == b"old" and (backing / "tmp").read_bytes() == b"new"
    assert (backing / "gone").read_bytes() == b"G"
    assert not (backing / "new").exists()
    fs = PowerCutFS(backing, mnt)
    os.unlink(mnt / "gone")
    fs.unmount()                                     # a clean unmount commits everything
    assert not (backing / "gone").exists() and os.listdir(f"{backing}.grave") == []


def test_fs_torn_cut_writes_part_of_the_unsynced_pages(cutfs: tuple[Path, Path]) -> None:
    backing, mnt = cutfs
    fs = PowerCutFS(backing, mnt)
    fsync_write(mnt / "t", b"")                             # the name is committed
    plain_write(mnt / "t", bytes(range(256)) * 16 * 64)  # 64 pages, none synced
    report = fs.cut(torn_seed=7)
    assert report["torn"] and report["lost"]["pages"] == 64
    data = (backing / "t").read_bytes()
    kept = [i for i in range(len(data) // 4096) if data[i * 4096:(i + 1) * 4096] == bytes(range(256)) * 16]
    assert 0 < len(kept) < 64, len(kept)  # some pages reached the disk, some did not


SQLITE_WRITER = r"""
import os, sqlite3, sys
path, sync, n, autockpt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table is on disk before the commits start
db.execute(f"PRAGMA synchronous={sync}")
db.execute(f"PRAGMA wal_autocheckpoint={autockpt}")
for i in range(1, n + 1):
    db.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(300)))
print(n, flush=True)
os._exit(0)  # no close (it would checkpoint): the process dies with the commits made
"""


def sqlite_survivors(backing: Path, name: str, work: Path) -> tuple[str, list[int]]:
    """integrity_check and the ids of a copy of what survived (the -shm is not copied: it never matters)."""
    work.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):
        if (backing / f"{name}{suffix}").exists():
            shutil.copy(backing / f"{name}{suffix}", work / f"{name}{suffix}")
    db = sqlite3.connect(work / name)
    try:
        ok = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        ids = [r[0] for r in db.execute("SELECT id FROM t ORDER BY id")]
    finally:
        db.close()
    return ok, ids


@pytest.mark.parametrize("sync,autockpt,torn", [("FULL", 1000, None), ("NORMAL", 1000, None),
                                                ("NORMAL", 40, None), ("NORMAL", 40, 3), ("FULL", 40, 5)])
def test_fs_sqlite_wal_across_a_cut(cutfs: tuple[Path, Path], tmp_path: Path, sync: str, autockpt: int,
                                    torn: int | None) -> None:
    """FULL keeps every commit; NORMAL may lose the last ones (all since the last checkpoint here) but
    keeps a prefix and is never corrupt, also when half of the unsynced pages reached the disk."""
    backing, mnt = cutfs
    n = 300
    fs = PowerCutFS(backing, mnt)
    out = subprocess.run([sys.executable, "-c", SQLITE_WRITER, str(mnt / "x.db"), sync, str(n), str(autockpt)],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(n), out.stderr
    report = fs.cut(torn_seed=torn)
    ok, ids = sqlite_survivors(backing, "x.db", tmp_path / "copy")
    print(f"synchronous={sync} autocheckpoint={autockpt} torn={torn}: {len(ids)} of {n} commits survived, "
          f"cut lost {report['lost']}")
    assert ok == "ok"
    assert ids == list(range(1, len(ids) + 1))  # a prefix of the commits, in order
    if sync == "FULL":
        assert len(ids) == n
    elif autockpt == 1000:
        assert ids == []  # no checkpoint happened: no commit was ever fsynced
    else:
        assert 0 < len(ids) < n  # the checkpoints' commits survived, the last ones did not


# ---------------------------------------------------------------------- the agent


class BootAgent(AgentProcess):
    """The agent in a private mount namespace where ``boot_file`` is bound over the kernel's boot id."""

    def __init__(self, config: Path, boot_file: Path, args: list[str] | None = None) -> None:
        super().__init__(config, args=args)
        self.boot_file = boot_file

    def start(self) -> BootAgent:
        out = open(self.log, "ab")  # noqa: SIM115
        # unshare and sh exec: the pid is the agent's, so kill() SIGKILLs the agent itself
        script = 'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"'
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                                      str(self.boot_file), sys.executable, "-m", "edge_agent", "run",
                                      "--config", str(self.config), *self.args],
                                     stdout=out, stderr=out, env=self.env, cwd=Path(__file__).resolve().parents[2])
        out.close()
        return self


def survivors(backing: Path, work: Path) -> tuple[str, int | None]:
    """integrity_check and the row count of a copy of the outbox as the cut left it on the "disk" (None:
    not even its schema had been synced)."""
    db_dir = backing / "state"
    if not (db_dir / "outbox.db").exists():
        return "ok", 0
    work.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        src = db_dir / f"outbox.db{suffix}"
        if src.exists():
            shutil.copy(src, work / f"outbox.db{suffix}")
    db = sqlite3.connect(work / "outbox.db")
    try:
        ok = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]) if "messages" in tables else None
    finally:
        db.close()
    shutil.rmtree(work)
    return ok, rows


def power_cut_loop(tmp_path: Path, broker: DevBroker, backing: Path, mnt: Path, *, mode: str, sync: str,
                   cuts: int, seed: int, interval: float = 0.005, final_count: int = 300,
                   run: tuple[float, float] = (1.2, 2.5), torn: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    prefix = unique("p")
    state = mnt / "state"
    cfg = tmp_path / "c.toml"
    storage = f'[storage]\nmode = "{mode}"\nsync = "{sync}"\n'
    boot = tmp_path / "boot_id"
    results: list[dict[str, Any]] = []
    fs = PowerCutFS(backing, mnt)
    try:
        with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{prefix}/dev-1/#", persistent=True) as col:
            write_config(cfg, proxy.port, state, prefix=prefix, sensors=sensors(("s1", interval, 0, "telemetry")))
            cfg.write_text(cfg.read_text().replace("[storage]\n", storage))
            for i in range(cuts):
                boot.write_text(f"00000000-0000-4000-8000-{i:012d}\n")
                agent = BootAgent(cfg, boot).start()
                early = i == 0  # the first cut comes while the agent starts and creates its files
                time.sleep(rng.uniform(0.2, 1.2) if early else rng.uniform(*run))
                stalled = not early and rng.random() < 0.5  # the broker stops answering: held messages are written
                if stalled:
                    proxy.set_mode("stall")
                    time.sleep(rng.uniform(0.6, 1.5))
                assert agent.alive(), agent.output()[-3000:]
                if not early:
                    marker = json.loads((state / "outbox.db.run").read_text())
                    assert marker == {"state": "running", "boot_id": f"00000000-0000-4000-8000-{i:012d}"}, marker
                agent.kill()
                report = fs.cut(torn_seed=rng.randrange(1 << 30) if torn else None)
                proxy.cut()
                proxy.set_mode("pass")
                ok, rows = survivors(backing, tmp_path / "copy")
                results.append({"early": early, "stalled": stalled, "lost": report["lost"], "undone": report["undone"],
                                "integrity": ok, "rows": rows})
                assert ok == "ok", results
                fs = PowerCutFS(backing, mnt)  # "boot" from what survived
            # a last boot that finishes its count and drains the backlog
            write_config(cfg, proxy.port, state, prefix=prefix,
                         sensors=sensors(("s1", interval, final_count, "telemetry")))
            cfg.write_text(cfg.read_text().replace("[storage]\n", storage))
            boot.write_text(f"00000000-0000-4000-8000-{cuts:012d}\n")
            agent = BootAgent(cfg, boot, args=["--exit-when-done"]).start()
            assert agent.wait(120) == 0, agent.output()[-3000:]
            acc = final_check(col, state, timeout=60)
            last = read_stats(outbox_file(state)).last_seq
            highest = max([last, *acc.received])
    finally:
        fs.unmount()
    # the disk reserve (storage.max_bytes 256 MiB -> 4 MiB) is whole again, whatever the cuts left of it
    reserve = (backing / "state" / "outbox.db.reserve").stat().st_size
    summary = {"mode": mode, "sync": sync, "cuts": results, "last_seq": last, "received": len(acc.received),
               "duplicates": acc.duplicates, "dropped": {k: len(v) for k, v in acc.dropped.items()}}
    print("power cut:", json.dumps(summary))
    assert reserve == 4 * 1024 * 1024, f"disk reserve {reserve} bytes after the cuts"
    assert highest == last, f"a seq above last_seq {last} arrived: {highest}"
    assert acc.missing == [], acc.summary()
    assert acc.conflicts == [], acc.summary()  # no seq ever arrived with two different readings
    assert "power_cut" in acc.dropped, acc.summary()  # every boot after a cut saw a new boot id ...
    assert "crash" not in acc.dropped, acc.summary()  # ... and none took it for a process crash
    assert sum(r["lost"]["bytes"] for r in results) > 0, results  # the cuts did throw data away
    return summary


@pytest.mark.parametrize("mode,sync", [("write_behind", "normal"), ("durable", "normal"), ("write_behind", "full"),
                                       ("durable", "full")])
def test_power_cut_agent(cutfs: tuple[Path, Path], tmp_path: Path, broker: DevBroker, mode: str, sync: str) -> None:
    backing, mnt = cutfs
    power_cut_loop(tmp_path, broker, backing, mnt, mode=mode, sync=sync, cuts=4, seed=11)


@long_only
@pytest.mark.parametrize("mode", ["write_behind", "durable"])
@pytest.mark.parametrize("sync", ["normal", "full"])
@pytest.mark.parametrize("torn", [False, True])
def test_power_cut_agent_long(cutfs: tuple[Path, Path], tmp_path: Path, broker: DevBroker, mode: str, sync: str,
                              torn: bool) -> None:
    backing, mnt = cutfs
    power_cut_loop(tmp_path, broker, backing, mnt, mode=mode, sync=sync, cuts=8, seed=21, torn=torn,
                   run=(0.8, 4.0), final_count=2000, interval=0.002)
