"""journald structured logging and sd_notify clients, over real AF_UNIX datagram sockets."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import logs, systemd
from tests.helpers import ROOT


def parse_journal(packet: bytes) -> dict[str, str]:
    """journald's native format: NAME=value\\n, or NAME\\n<u64 le length><bytes>\\n."""
    out: dict[str, str] = {}
    i = 0
    while i < len(packet):
        nl = packet.index(b"\n", i)
        line = packet[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", packet[nl + 1:nl + 9])
            out[line.decode()] = packet[nl + 9:nl + 9 + n].decode()
            assert packet[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return out


@pytest.fixture
def dgram(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "sock"))
    s.settimeout(5)
    yield s
    s.close()


def test_native_journal_handler_sends_structured_fields(tmp_path: Path, dgram: socket.socket) -> None:
    h = logs.NativeJournalHandler(path=str(tmp_path / "sock"))
    log = logging.getLogger("edge_agent.test.journal")
    log.addHandler(h)
    log.propagate = False
    try:
        log.warning("disk %s", "full", extra={"DEVICE": "pi-7"})
        f = parse_journal(dgram.recv(65536))
        assert f["MESSAGE"] == "disk full" and f["PRIORITY"] == "4" and f["SYSLOG_IDENTIFIER"] == "edge-agent"
        assert f["LOGGER"] == "edge_agent.test.journal" and f["DEVICE"] == "pi-7"
        assert f["CODE_FUNC"] == "test_native_journal_handler_sends_structured_fields"
        assert f["CODE_FILE"].endswith("test_logs.py") and int(f["CODE_LINE"]) > 0
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("sensor failed")
        f = parse_journal(dgram.recv(65536))
        assert f["PRIORITY"] == "3"
        assert "Traceback" in f["EXCEPTION_TEXT"] and "ValueError: bad\nthing" in f["EXCEPTION_TEXT"]
        assert f["MESSAGE"].startswith("sensor failed\nTraceback"), "one journal entry per traceback"
    finally:
        log.removeHandler(h)
        h.close()


def test_journal_unreachable_falls_back_to_prefixed_stderr(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    h = logs.NativeJournalHandler(path=str(tmp_path / "missing.sock"))
    h._fallback.stream = sys.stderr
    h.emit(logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 1, "boom\nline2", None, None))
    h.close()
    assert capsys.readouterr().err == "<3>edge_agent.x: boom\n<3>line2\n"


def _setup_in_child(env: dict[str, str], journal: bool) -> str:
    """Run logs.setup() in a child whose stderr is a file; report the handler chosen."""
    code = ("import logging, os, sys; from edge_agent import logs; st = os.fstat(2); "
            "os.environ['JOURNAL_STREAM'] = os.environ.get('JOURNAL_STREAM', '').replace('MATCH', "
            "f'{st.st_dev}:{st.st_ino}'); "
            f"logs.setup('info', {journal}); h = logging.getLogger().handlers[0]; "
            "print(type(h).__name__, type(h.formatter).__name__ if h.formatter else '-')")
    with open(Path(env["TMP"]) / "err", "wb") as err:
        out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=err,
                             cwd=ROOT, check=True, text=True)
    return out.stdout.strip()


@pytest.mark.parametrize(("stream", "journal", "want"), [
    ("", True, "StreamHandler Formatter"),
    ("1:1", True, "StreamHandler Formatter"),  # JOURNAL_STREAM inherited by a child whose stderr is a file
    ("MATCH", False, "StreamHandler PriorityPrefixFormatter"),
    ("MATCH", True, "JournalHandler"),
])
def test_setup_chooses_journal_only_when_stderr_is_the_journal(tmp_path: Path, stream: str, journal: bool,
                                                               want: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env["TMP"] = str(tmp_path)
    if stream:
        env["JOURNAL_STREAM"] = stream
    got = _setup_in_child(env, journal)
    # systemd-python's JournalHandler when installed, else ours (NativeJournalHandler)
    assert got.startswith(want) or (want == "JournalHandler" and got.startswith("NativeJournalHandler"))


@pytest.mark.parametrize("backend", ["socket", "systemd-python"])
def test_notify_reaches_socket_with_either_backend(tmp_path: Path, dgram: socket.socket,
                                                   monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    if backend == "socket":
        monkeypatch.setattr(systemd, "_daemon", None)
    elif systemd.backend() != "systemd-python":
        pytest.skip("systemd-python is not installed (pip install '.[systemd]', needs libsystemd-dev)")
    assert systemd.backend() == backend
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "sock"))
    assert systemd.ready("started; backlog 0")
    assert dgram.recv(4096) == b"READY=1\nSTATUS=started; backlog 0"
    assert systemd.watchdog()
    assert dgram.recv(4096) == b"WATCHDOG=1"


def test_notify_abstract_socket_and_noop_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "_daemon", None)
    name = f"edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.status("online; backlog 3")
        assert s.recv(4096) == b"STATUS=online; backlog 3"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.ready() is False and systemd.watchdog() is False  # no-op, no error


def test_watchdog_interval_honours_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process (we were forked/exec'd)
    assert systemd.watchdog_interval() == 0.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
