"""A file's status when the broker acknowledges every chunk before the sender has finished putting them.

``send_file`` puts the chunks, then ends the fill, and only then may the file's status move. In CI the
broker once acknowledged all five chunks of a small file before the fill ended; the ack path forgot the
chunks' states while the fill was still open, the end of the fill found nothing, and the file stayed
``pending`` for good (``test_missing_chunks_are_reported_and_resent`` timed out waiting for ``sent``).
Here the race is made certain: the end of the fill waits until every chunk's PUBACK is recorded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_agent.devbroker import DevBroker
from tests.helpers import wait_for
from tests.messaging.common import make_agent


def test_a_file_acknowledged_before_its_fill_ends_still_becomes_sent(broker: DevBroker, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(5000))
    a = make_agent(broker, tmp_path, "123", messaging={"chunk_size": 1024})
    seen: list[str] = []
    a.on_message_status(lambda m: seen.append(m.status))
    with a:
        assert a.wait_online(10)
        parts = a.service._need()
        real_end = parts.tracker.end_fill
        acked_first: list[bool] = []

        def late_end(mid: str, **kw: Any) -> None:
            # every chunk stored and acknowledged by the broker, and the acks recorded, before the fill ends
            def all_acked() -> bool:
                state = parts.history.min_outseq_state(mid)
                return state is None or state >= 2  # None: the states were forgotten (the bug)
            wait_for(all_acked, 10, msg="every chunk acknowledged")
            acked_first.append(True)
            real_end(mid, **kw)

        parts.tracker.end_fill = late_end  # type: ignore[method-assign]
        f = a.send_file("456", src)
        assert acked_first == [True]
        m = a.wait_status(f, "sent", timeout=10)
        assert m.status == "sent"
        wait_for(lambda: "sent" in seen, 5, msg=f"the 'sent' callback: {seen}")
        assert seen[0] == "pending" and seen.count("sent") == 1, seen
        assert [h.status for h in a.history(peer="456")] == ["sent"]
