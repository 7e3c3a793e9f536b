"""sd_notify without a hard dependency: systemd-python when installed, else a tiny socket client.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so ``edge-agent run`` behaves the same on
macOS, in containers and on dev boxes.
"""

from __future__ import annotations

import os
import socket


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


try:  # pragma: no cover - depends on the platform
    from systemd import daemon as _daemon  # type: ignore[import-not-found]

    def notify(msg: str) -> bool:
        if not os.environ.get("NOTIFY_SOCKET"):
            return False
        return bool(_daemon.notify(msg))
except ImportError:
    notify = _send_raw


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
