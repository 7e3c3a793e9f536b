"""A throwaway local Mosquitto for the demo and the tests (never used in production).

Starts ``mosquitto`` on a free loopback port with a config in a temp dir, waits until it accepts
connections, and stops it on exit. Clear error when Mosquitto is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")
         if os.path.exists(p)), None)
    if exe is None:
        raise BrokerUnavailable("mosquitto is not installed: sudo apt-get install -y mosquitto "
                                "(macOS: brew install mosquitto)")
    return exe


class DevBroker:
    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None,
                 extra_conf: str = "", persistence: bool = False) -> None:
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edge-broker-")
        self.dir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.exe = find_mosquitto()

    def conf_text(self) -> str:
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0",
                 "max_inflight_messages 0", "max_packet_size 10485760"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # as root mosquitto would switch to its own user, which cannot reach a private temp dir
            lines.append("user root")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        else:
            lines += ["persistence false"]
        return "\n".join(lines) + "\n" + self.extra_conf

    def start(self, timeout: float = 10.0) -> DevBroker:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.conf_text())
        os.chmod(self.dir, 0o777)  # mosquitto drops root privileges to its own user
        log = open(self.dir / "mosquitto.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([self.exe, "-c", str(conf)], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"mosquitto exited with {self.proc.returncode}: "
                                        f"{(self.dir / 'mosquitto.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
