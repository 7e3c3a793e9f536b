"""Logging setup: the systemd journal with structured fields under systemd, plain stderr otherwise.

Under systemd (stderr is the journal stream named by ``$JOURNAL_STREAM``) each record goes to the
journal as its own entry with fields, so ``journalctl -u edge-agent PRIORITY=3`` or
``journalctl -u edge-agent LOGGER=edge_agent.sensor.t1`` work and multi-line tracebacks stay one entry:

    MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=edge-agent, LOGGER, THREAD_NAME, CODE_FILE, CODE_LINE,
    CODE_FUNC, EXCEPTION_TEXT (with a traceback), plus any ``extra={"UPPER_CASE": ...}`` of the call.

systemd-python's JournalHandler is used when it is installed; otherwise :class:`NativeJournalHandler`
speaks journald's native datagram protocol itself (systemd-python needs libsystemd-dev to build into a
venv, so the agent does not require it). If the journal socket is unreachable, records go to stderr with
a ``<N>`` priority prefix, which journald still understands. Outside systemd: stderr with timestamps.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
import traceback

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "edge-agent"
_FIELD = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")


def syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stderr_is_journal() -> bool:
    """True when fd 2 is the journal stream systemd connected (``JOURNAL_STREAM=dev:ino``)."""
    js = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = js.partition(":")
    try:
        st = os.fstat(2)
        return bool(js) and st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


def _field(name: str, value: object) -> bytes:
    data = str(value).encode("utf-8", "replace")
    key = name.encode()
    if b"\n" in data:  # binary-safe form: NAME\n<u64 le length><data>\n
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class NativeJournalHandler(logging.Handler):
    """journald's native protocol over an AF_UNIX datagram socket, no libsystemd needed."""

    def __init__(self, identifier: str = IDENTIFIER, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(PriorityPrefixFormatter())

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        msg = record.getMessage()
        out: dict[str, object] = {
            "MESSAGE": msg, "PRIORITY": syslog_priority(record.levelno), "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name, "THREAD_NAME": record.threadName, "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno, "CODE_FUNC": record.funcName}
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info))
            out["EXCEPTION_TEXT"] = text
            out["MESSAGE"] = f"{msg}\n{text}"
        for k, v in record.__dict__.items():
            if _FIELD.fullmatch(k) and k not in out:
                out[k] = v
        return out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            packet = b"".join(_field(k, v) for k, v in self.fields(record).items())
            self._sock.sendto(packet, self.path)
        except OSError:
            self._fallback.emit(record)  # journal gone or record too big: stderr still reaches it
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


class PriorityPrefixFormatter(logging.Formatter):
    """``<3>edge_agent.forwarder: message``: journald reads the syslog priority from the prefix."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = syslog_priority(record.levelno)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def journal_handler() -> logging.Handler:
    """systemd-python's JournalHandler when installed, else :class:`NativeJournalHandler`."""
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found]

        return JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)  # type: ignore[no-any-return]
    except ImportError:
        return NativeJournalHandler()


def setup(level: str = "info", journal: bool = True) -> None:
    """Route the root logger: journal (``journal`` and stderr is the journal), else stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    under_journal = stderr_is_journal()
    handler: logging.Handler
    if journal and under_journal:
        handler = journal_handler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        if under_journal:
            handler.setFormatter(PriorityPrefixFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
