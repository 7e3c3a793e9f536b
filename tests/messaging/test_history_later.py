"""send() stores its history row later (history/pending.py): journaled at once, in the database with the
next transaction. Every read sees what send() returned, the order is kept, the bulk insert stores exactly
what the per-row one does, and a SIGKILL loses no row: what send() returned is in the history after the
restart (failed if the outbox lost it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.devbroker import DevBroker
from edge_agent.messaging.history import History
from edge_agent.messaging.history.pending import QUEUE_LIMIT
from edge_agent.messaging.history.store import insert_row, insert_rows, make_row
from tests.helpers import ROOT
from tests.messaging.common import make_agent

T0 = 1_700_000_000.0


def _row(i: int, *, peer: str = "bob", text: str = "hello") -> list[object]:
    from edge_agent import codec

    data = {"i": i, "text": f"{text} {i}"}
    return make_row(mid=f"me:{i}", sender="me", seq=i, outgoing=True, kind="msg", blob=codec.encode(data),
                    body=f"{text} {i}", ts=T0 + i, status="pending", peer=peer, group=None, stream=None,
                    expires=T0 + 3600, notified=True, now=T0 + i, outseqs=[i], cls="event", unread=None)


def _later(tmp_path: Path, name: str = "h.db") -> History:
    h = History(tmp_path / name)
    h.open_journal()
    h.store_later(True)
    return h


def _add(h: History, i: int, peer: str = "bob") -> None:
    h.add_later(mid=f"me:{i}", sender="me", seq=i, kind="msg", data={"i": i, "text": f"hello {i}"}, ts=T0 + i,
                status="pending", peer=peer, expires=T0 + 3600, outseqs=[i], cls="event")


def test_every_read_sees_rows_stored_later_in_order(tmp_path: Path) -> None:
    h = _later(tmp_path)
    for i in range(1, 51):
        _add(h, i, peer="bob" if i % 2 else "ann")
    assert h.waiting == 50  # nothing stored them yet: no writer thread here
    assert h.get("me:50") is not None and h.waiting == 0  # the read stored them first
    _add(h, 51)
    assert [m.seq for m in h.query(peer="bob")] == [*range(1, 51, 2), 51]
    _add(h, 52, peer="ann")
    assert [m.seq for m in h.query(search="hello")] == list(range(1, 53))  # the full-text index too
    _add(h, 53, peer="cat")
    assert {s.name: s.last.seq for s in h.summary()} == {"bob": 51, "ann": 52, "cat": 53}
    _add(h, 54)
    assert sorted(h.tracked_seqs()) == list(range(1, 55))
    h.close()


def test_bulk_insert_stores_what_the_row_by_row_insert_does(tmp_path: Path) -> None:
    rows = [_row(i, peer=("bob", "ann", "cat")[i % 3]) for i in range(1, 450)]  # more than one part of 200
    a, b = History(tmp_path / "a.db"), History(tmp_path / "b.db")
    with a.db.tx() as conn:
        insert_row(conn, _row(7, peer="bob"))  # already there: ignored by both
        assert [insert_row(conn, r) is not None for r in rows].count(True) == len(rows) - 1
    with b.db.tx() as conn:
        insert_row(conn, _row(7, peer="bob"))
        assert insert_rows(conn, rows) == len(rows) - 1

    def dump(h: History) -> list[list[object]]:
        with h.db as conn:
            return [conn.execute(q).fetchall() for q in (
                "SELECT * FROM messages ORDER BY id", "SELECT * FROM convs ORDER BY conv",
                "SELECT * FROM outseq ORDER BY seq", "SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'hello'")]

    assert dump(a) == dump(b)
    a.close()
    b.close()


def test_status_writes_queued_later_run_in_order_with_the_rows(tmp_path: Path) -> None:
    h = _later(tmp_path)
    for i in range(1, 6):
        _add(h, i)
    h.set_queued([1, 2], ["me:1", "me:2"], T0 + 10)
    h.set_sent(["me:2", "me:3"], T0 + 11)
    _add(h, 6)
    assert h.waiting == 8
    assert [(m.seq, m.status) for m in h.query()] == [(1, "queued"), (2, "sent"), (3, "sent"), (4, "pending"),
                                                      (5, "pending"), (6, "pending")]
    assert h.tracked_seqs() == {1: ("me:1", 1), 4: ("me:4", 0), 5: ("me:5", 0), 6: ("me:6", 0)}
    h.close()


def test_a_full_queue_waits_for_the_writer_then_goes_on(tmp_path: Path) -> None:
    h = _later(tmp_path)
    for i in range(1, QUEUE_LIMIT + 1):
        _add(h, i)
    t = time.monotonic()
    _add(h, QUEUE_LIMIT + 1)  # no writer here: waits its bounded time, then is queued anyway
    assert 0.1 < time.monotonic() - t < 2.0
    assert h.waiting == QUEUE_LIMIT + 1 and len(list(h.query())) == QUEUE_LIMIT + 1
    h.close()


def test_the_journal_is_replayed_once_and_emptied_on_commit(tmp_path: Path) -> None:
    h = _later(tmp_path)
    assert h.get("me:1") is None
    for i in range(1, 4):
        _add(h, i)
    killed = tmp_path / "killed"  # the files as a kill would leave them: rows only in the journal
    killed.mkdir()
    for f in tmp_path.glob("h.db*"):
        shutil.copy(f, killed / f.name)
    h.close()  # stores the rows and empties the journal
    again = History(tmp_path / "h.db")
    assert again.open_journal() == 0  # committed rows are not stored twice
    assert [m.seq for m in again.query()] == [1, 2, 3]
    again.close()
    after = History(killed / "h.db")
    assert after.get("me:1") is None
    assert after.open_journal() == 3
    assert [(m.seq, m.status) for m in after.query()] == [(1, "pending"), (2, "pending"), (3, "pending")]
    after.close()
    assert History(killed / "h.db").open_journal() == 0  # emptied once stored


def test_a_damaged_or_foreign_journal_is_refused_where_it_goes_bad_and_the_history_opens(tmp_path: Path) -> None:
    """Hostile files: a journal whose second record is garbage keeps the first (replay stops at the damage,
    the history still opens); one that is not a journal at all (random bytes, a length past the end of
    the file) stores nothing and does not stop the history from opening."""
    import struct

    from edge_agent import codec

    h = _later(tmp_path)
    _add(h, 1)
    _add(h, 2)
    killed = tmp_path / "killed"
    killed.mkdir()
    for f in tmp_path.glob("h.db*"):
        shutil.copy(f, killed / f.name)
    h.close()
    journal = next(f for f in killed.glob("h.db.j*") if f.stat().st_size and f.read_bytes()[:4] != bytes(4))
    buf = bytearray(journal.read_bytes())
    (n,) = struct.unpack_from(">I", buf, 0)
    buf[4 + n + 4:4 + n + 12] = b"\xc1" * 8  # the second record's msgpack: a byte msgpack never uses
    journal.write_bytes(bytes(buf))
    damaged = History(killed / "h.db")
    assert damaged.open_journal() == 1
    assert [m.seq for m in damaged.query()] == [1]
    damaged.close()

    for junk in (os.urandom(4096), struct.pack(">I", 1 << 30) + codec.encode([1, 2])):
        d = tmp_path / f"junk{len(junk)}"
        d.mkdir()
        (d / "h.db.j0").write_bytes(junk)
        foreign = History(d / "h.db")
        assert foreign.open_journal() == 0
        assert list(foreign.query()) == []
        _add(foreign, 7)
        assert [m.seq for m in foreign.query()] == [7]
        foreign.close()


_CHILD = """
import os, signal, sys
from edge_agent import Agent
port, state, fd = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
a = Agent(device_id="kill-a", host="127.0.0.1", port=port, state_dir=state)
a.start()
assert a.wait_online(10)
ids = [a.send("kill-b", {"i": i}).id for i in range(300)]
h = a.service.history
with h.db:  # the writer cannot store now: the next rows are only journaled when the process dies
    ids += [a.send("kill-b", {"i": i}).id for i in range(300, 800)]
    os.write(fd, (" ".join(ids) + " WAITING " + str(h.waiting) + chr(10)).encode())
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_loses_no_row_send_returned(broker: DevBroker, tmp_path: Path) -> None:
    state = tmp_path / "kill-a"
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(broker.port), str(state), str(w)], cwd=ROOT,
                         pass_fds=(w,), env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(w)
    p.wait(60)
    out = os.read(r, 1 << 20).decode().split()
    os.close(r)
    assert p.returncode == -9, out
    ids, waiting = out[:-2], int(out[-1])
    assert len(ids) == 800 and waiting >= 400, waiting  # the kill came while rows were only journaled
    a = make_agent(broker, tmp_path, "kill-a")
    with a:
        got = list(a.history(peer="kill-b"))
        assert [m.id for m in got] == ids  # every one, in the order send() returned them
        assert {m.status for m in got} <= {"queued", "sent", "failed"}, {m.status for m in got}
        lost = [m for m in got if m.status == "failed"]
        assert all("lost" in m.reason for m in lost)
        assert all((state / f"history.db.j{i}").read_bytes()[:4] == bytes(4) for i in (0, 1))  # emptied
