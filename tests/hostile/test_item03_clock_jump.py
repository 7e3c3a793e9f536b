"""Issue 14 item 3: one start with the clock 10 days ahead persisted a time floor that refused every
signed command (``clock_not_synced``) for 10 days once the clock was right again, with no remote fix.

Now the clock floor (the device's own clock at a start) is soft: a verified signed command issued after
everything this device has admitted (the *trusted floor*, moved only by signatures) and within
``commands.max_clock_skew`` of the device clock confirms the device clock and resets the floor. The
clock is injected (``CommandService.clock``)."""

from __future__ import annotations

import time

from edge_agent.commands.signing import Signer
from edge_agent.commands.store import CommandStore
from tests.commands.conftest import Requester, key_snippet

T = "edge/dev-1/cmd/"
DAY = 86400.0


def test_forward_clock_jump_is_recoverable(make_app, requester: Requester, signer: Signer) -> None:
    app = make_app(keys=key_snippet(signer), start=False)
    svc = app.service("commands")
    svc.clock = lambda: time.time() + 10 * DAY  # one start with the clock 10 days ahead
    app.start()
    assert app.transport.wait_online(10)
    time.sleep(0.2)
    assert svc.store.time_floor() > time.time() + 9 * DAY

    svc.clock = time.time  # NTP puts it right
    assert not svc.clock_sane()
    rep = requester.request(T + "config.get", signer.sign("device", "dev-1", "config.get", {"key": "device.id"}))
    assert rep["status"] == "ok", rep  # was clock_not_synced for 10 days
    assert svc.clock_sane() and svc.store.time_floor() <= time.time()
    trusted = svc.store.trusted_floor()
    assert time.time() - 60 < trusted <= time.time()

    # the floor jumps ahead again (another start with a bad clock); what may and may not reset it
    svc.store.raise_time_floor(time.time() + 10 * DAY)
    older = signer.sign("device", "dev-1", "config.get", now=trusted - 100)  # issued before the last admitted
    rep = requester.request(T + "config.get", older)
    assert rep["status"] == "error" and rep["error"]["code"] == "clock_not_synced", rep
    skewed = signer.sign("device", "dev-1", "config.get", now=time.time() - 2 * 300.0)  # beyond max_clock_skew
    rep = requester.request(T + "config.get", skewed)
    assert rep["error"]["code"] == "clock_not_synced", rep
    forged = signer.sign("device", "dev-1", "config.get")
    forged["sig"] = bytes(64)  # a bad signature never vouches for the clock
    rep = requester.request(T + "config.get", forged)
    assert rep["error"]["code"] == "bad_signature", rep
    assert svc.store.time_floor() > time.time() + 9 * DAY
    # unsigned read-only commands never moved or needed the floor
    assert requester.request(T + "ping", {})["status"] == "ok"

    fresh = signer.sign("device", "dev-1", "config.get")
    assert requester.request(T + "config.get", fresh)["status"] == "ok"
    # persisted: a restart sees the reset floor and the trusted floor
    other = CommandStore(svc.store.path).open()
    try:
        assert other.time_floor() <= time.time() and other.trusted_floor() >= fresh["issued_at"] - 1
    finally:
        other.close()


def test_clock_behind_the_trusted_floor_stays_refused(make_app, requester: Requester, signer: Signer) -> None:
    """The hard floor is not recoverable: a device clock behind what an operator's signature vouched for
    is wrong, whatever a (replayed or fresh) command says."""
    app = make_app(keys=key_snippet(signer))
    svc = app.service("commands")
    assert requester.request(T + "ping", signer.sign("device", "dev-1", "ping"))["status"] == "ok"
    svc.clock = lambda: time.time() - 3 * DAY  # the clock goes back 3 days
    old = signer.sign("device", "dev-1", "ping", now=time.time() - 3 * DAY)  # "issued" at the device's time
    rep = requester.request(T + "ping", old)
    assert rep["error"]["code"] == "clock_not_synced", rep
