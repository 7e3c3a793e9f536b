"""Issue 14, item 5: after a SIGKILL, a message id is never handed out again, a message lost with the
process reaches ``on_message_status`` as ``failed`` with its reason, and ``queued`` for a file means every
chunk is stored (before: the lost message was renamed ``<id>~lost<ts>`` silently and the next send() got
its id; a file was ``queued`` once its first chunks were acknowledged while the rest were still in memory).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from edge_agent.devbroker import DevBroker
from tests.helpers import ROOT, wait_for
from tests.messaging.test_examples import Proc

APP = Path(__file__).with_name("item05_app.py")


class Child(Proc):
    """The app in a child process, its stdout lines collected as they come."""

    def __init__(self, *args: str) -> None:
        super().__init__([str(APP), *args], ROOT)

    def line(self, prefix: str, timeout: float = 30.0) -> str:
        wait_for(lambda: any(x.startswith(prefix) for x in self.lines) or self.p.poll() is not None, timeout,
                 msg=f"{prefix} from the child")
        found = [x for x in self.lines if x.startswith(prefix)]
        assert found, "\n".join(self.lines)
        return found[0]

    def statuses(self, mid: str) -> list[str]:
        return [x for x in self.lines if x.startswith(f"STATUS {mid} ")]

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        self.t.join(10)  # every line the child printed before it died


@pytest.mark.parametrize("mode", ["durable", "write_behind"])
def test_ids_are_never_reused_and_the_lost_are_reported(broker: DevBroker, tmp_path: Path, mode: str) -> None:
    """durable: the 5 messages wait for the 5 s group commit, so the kill loses all of them. write_behind:
    each went to the broker at once; the ones whose PUBACK came before the kill are ``sent``, the rest
    were in flight or held and end ``failed`` after the restart (they may have been delivered)."""
    state = str(tmp_path / "state")
    c = Child("send", "--port", str(broker.port), "--state", state, "--storage-mode", mode)
    try:
        lost = c.line("SENT ").split()[1:]
    finally:
        c.kill()
    assert len(lost) == 5
    done = {mid for mid in lost if any(" sent " in x for x in c.statuses(mid))}
    if mode == "durable":
        assert not done, c.lines  # nothing was published before its commit
    c2 = Child("check", "--port", str(broker.port), "--state", state, "--storage-mode", mode)
    try:
        new = c2.line("NEW ").split()[1]
        assert new not in lost, f"the id {new} of a lost message was handed out again"
        assert int(new.rsplit(":", 1)[1]) > max(int(m.rsplit(":", 1)[1]) for m in lost)
        for mid in lost:
            if mid in done:
                assert not c2.statuses(mid), c2.statuses(mid)  # over: nothing more to say
                continue
            wait_for(lambda mid=mid: c2.statuses(mid), 10, msg=f"a status for {mid}")
            (st,) = c2.statuses(mid)
            assert re.match(rf"STATUS {re.escape(mid)} failed lost: the agent stopped", st), st
    finally:
        c2.kill()


def test_a_file_is_queued_only_once_every_chunk_is_stored(broker: DevBroker, tmp_path: Path) -> None:
    """96 chunks: the first 64 are flushed (every 4 MiB) and acknowledged by the broker while the last 32
    wait for the 5 s group commit. A SIGKILL right after ``queued`` must lose none of them."""
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(96 * 64 * 1024))
    state = str(tmp_path / "state")
    c = Child("file", "--port", str(broker.port), "--state", state, "--file", str(f), "--storage-mode", "durable")
    try:
        mid = c.line("QUEUED ", 60).split()[1]
    finally:
        c.kill()
    c2 = Child("check", "--port", str(broker.port), "--state", state, "--storage-mode", "durable")
    try:
        c2.line("NEW ")
        time.sleep(3.0)  # reconcile and the backlog's first round
        assert not any(" failed " in x for x in c2.statuses(mid)), c2.statuses(mid)
        # the last chunks' PUBACKs may have come before the kill: then the history says sent at the restart
        wait_for(lambda: any(x.startswith(f"STATUS {mid} sent") for x in c2.lines)
                 or f" {mid}=sent" in c2.line("HAVE "), 30, msg="the file sent")
    finally:
        c2.kill()
