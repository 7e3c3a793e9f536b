"""sd_notify without a hard dependency: systemd-python when installed, else a tiny socket client.

Why both: systemd-python is the reference client, but it needs libsystemd-dev and a compiler to build
into a venv (Debian's python3-systemd serves only the system Python), so the agent must not depend on
it. The fallback speaks the same protocol: one AF_UNIX datagram of ``KEY=value`` lines to
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op that returns False, so ``edge-agent run``
behaves the same on macOS, in containers and on dev boxes.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import ModuleType

_daemon: ModuleType | None
try:  # pragma: no cover - depends on the platform
    from systemd import daemon as _daemon  # type: ignore[import-not-found,no-redef]
except ImportError:
    _daemon = None


def backend() -> str:
    """Which sd_notify client is in use: 'systemd-python' or 'socket'."""
    return "systemd-python" if _daemon is not None else "socket"


def _send_raw(msg: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(msg.encode())
        return True
    except OSError:
        return False


def notify(msg: str) -> bool:
    """Send one notification (``READY=1``, ``STATUS=...``); False when not under systemd or on error."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    if _daemon is not None:
        try:
            return bool(_daemon.notify(msg))
        except (OSError, ValueError):
            return False
    return _send_raw(msg)


def watchdog_interval() -> float:
    """Seconds between WATCHDOG=1 pings systemd expects (half its timeout), or 0 when not enabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return 0.0
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return 0.0


def runtime_file(name: str) -> Path | None:
    """``$RUNTIME_DIRECTORY/name`` (RuntimeDirectory= in the unit), or None when not set."""
    rd = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(rd) / name if rd else None


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    return notify("RELOADING=1")
