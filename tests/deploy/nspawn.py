"""Real systemd hosts for the rollout test: Debian bookworm containers booted with ``systemd-nspawn --boot``.

Why not a mock or Docker: the acceptance is that the unit, the watchdog and the role work under a real
systemd as PID 1. Each container gets its own network namespace (veth to a private bridge on a fresh
10.x subnet that this module creates and removes), sshd with key auth, and a volatile overlay on a
shared read-only rootfs, so N hosts cost one debootstrap.

The rootfs is built once with debootstrap from the Debian mirror in /etc/apt/sources.list and cached
as a tar.zst under ``/var/cache/edge-agent-tests/`` (key: suite, package list, mirror), then reused.
Everything created here is torn down by :meth:`Fleet.close` (the test calls it in a finalizer).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-apt",
            "python3-packaging", "openssh-server", "iproute2", "procps")
CACHE = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", "/var/cache/edge-agent-tests"))


def unavailable_reason() -> str:
    """Why the real-host test cannot run here ('' when it can)."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, network namespaces)"
    for tool in ("systemd-nspawn", "debootstrap", "ip", "ssh", "ssh-keygen", "zstd", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install systemd-container debootstrap iproute2 openssh-client zstd)"
    return ""


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (deb822 or one-line sources)."""
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(p.read_text())
        except OSError:
            continue
    for text in texts:
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M):
            if m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1)
    return "http://deb.debian.org/debian"


def rootfs_tarball(log=print) -> Path:
    """The cached rootfs tar.zst, built with debootstrap on first use (about a minute)."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{SUITE}|minbase|{','.join(PACKAGES)}|{mirror}".encode()).hexdigest()[:12]
    tar = CACHE / f"{SUITE}-{key}.tar.zst"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    try:
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                        str(work), mirror], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # nspawn --hostname only applies when the image has no /etc/hostname of its own
        (work / "etc/hostname").unlink(missing_ok=True)
        (work / "etc/machine-id").write_text("")
        subprocess.run(["apt-get", "clean"], cwd=work, check=False)
        shutil.rmtree(work / "var/lib/apt/lists", ignore_errors=True)
        (work / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        part = tar.with_suffix(".part")
        subprocess.run(f"tar -C {work} --numeric-owner -cf - . | zstd -q -T0 -o {part}", shell=True,
                       check=True)
        part.rename(tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"rootfs built with debootstrap from {mirror} in {time.monotonic() - t0:.0f} s: {tar}")
    return tar


def extract(tar: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"zstd -q -dc {tar} | tar -C {dest} --numeric-owner -xf -", shell=True, check=True)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def free_subnet() -> str:
    """A 10.231.N.0/24 not used by any address or route on this machine (a fresh one per run)."""
    used = _ip("-4", "addr").stdout + _ip("-4", "route").stdout
    for _ in range(200):
        n = int.from_bytes(os.urandom(1), "big")
        if f"10.231.{n}." not in used:
            return f"10.231.{n}"
    raise RuntimeError("no free 10.231.N.0/24 subnet")


class Fleet:
    """N booted containers on a private bridge; :meth:`close` removes everything it created."""

    def __init__(self, workdir: Path, count: int = 2, log=print) -> None:
        self.workdir = workdir
        self.count = count
        self.log = log
        self.tag = os.urandom(2).hex()
        self.net = free_subnet()
        self.bridge = f"eab{self.tag}"
        self.gateway = f"{self.net}.1"
        self.base = workdir / "rootfs"
        self.key = workdir / "id_ed25519"
        self.hosts: dict[str, str] = {}  # name -> address
        self.netns: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._bridge_up = False

    # ------------------------------------------------------------------ setup
    def start(self) -> Fleet:
        t0 = time.monotonic()
        tar = rootfs_tarball(self.log)
        extract(tar, self.base)
        for old in (self.key, self.key.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True,
                       stdin=subprocess.DEVNULL)
        ssh_dir = self.base / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        # No DNS on the private network: name the hosts in /etc/hosts, and leave resolv.conf without a
        # server (glibc then asks 127.0.0.1 and is refused at once) instead of the host's unreachable
        # resolver, which costs Ansible's fact gathering 10 s per host (getfqdn timeouts).
        names = "".join(f"{self.net}.{10 + i} pi{i}\n" for i in range(1, self.count + 1))
        with open(self.base / "etc/hosts", "a") as fh:
            fh.write(names)
        (self.base / "etc/resolv.conf").unlink(missing_ok=True)
        (self.base / "etc/resolv.conf").write_text("# no DNS on the test network\n")
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_up = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            self._start_host(f"pi{i}", f"{self.net}.{10 + i}")
        self.wait_ssh()
        self.log(f"fleet of {self.count} booted, sshd up, in {time.monotonic() - t0:.1f} s "
                 f"(bridge {self.bridge} {self.gateway}/24)")
        return self

    def _start_host(self, name: str, addr: str) -> None:
        ns = f"ea{self.tag}{name}"
        _ip("netns", "add", ns)
        self.netns.append(ns)
        host_if, peer = f"ve{self.tag}{name}", f"vp{self.tag}{name}"
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("link", "set", host_if, "master", self.bridge, "up")
        for args in (("link", "set", peer, "name", "eth0"), ("addr", "add", f"{addr}/24", "dev", "eth0"),
                     ("link", "set", "eth0", "up"), ("link", "set", "lo", "up"),
                     ("route", "add", "default", "via", self.gateway)):
            _ip("-n", ns, *args)
        out = open(self.workdir / f"{name}.console.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive", "--resolv-conf=off",
             "--volatile=overlay", f"--hostname={name}", f"--machine=ea{self.tag}{name}",
             f"--network-namespace-path=/run/netns/{ns}", "-D", str(self.base)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        out.close()
        self.hosts[name] = addr

    def wait_ssh(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pending = dict(self.hosts)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}: systemd-nspawn exited {proc.returncode}: {self.console(name)}")
                if self.ssh(name, "true", timeout=10, check=False).returncode == 0:
                    del pending[name]
            time.sleep(0.5)
        if pending:
            raise RuntimeError(f"no ssh on {sorted(pending)} within {timeout} s: "
                               + " | ".join(self.console(n) for n in pending))

    # ------------------------------------------------------------------ use
    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]

    def ssh(self, name: str, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ssh", *self.ssh_args(), f"root@{self.hosts[name]}", command], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            why = f"{name}: {command!r} -> {r.returncode}: {r.stderr or r.stdout}"
            if "systemctl" in command:  # a unit that failed: its own last words say why
                j = subprocess.run(["ssh", *self.ssh_args(), f"root@{self.hosts[name]}",
                                    "journalctl -u edge-agent --no-pager -o cat -n 40"], capture_output=True,
                                   text=True, timeout=timeout)
                why += "\n--- journalctl -u edge-agent (last 40 lines):\n" + j.stdout
            raise RuntimeError(why)
        return r

    def console(self, name: str) -> str:
        p = self.workdir / f"{name}.console.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        t0 = time.monotonic()
        for proc in self.procs.values():  # SIGTERM: nspawn asks the container's systemd to power off
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{name}: no clean poweroff within 20 s; killing the container")
                self._kill_container(proc)
        for ns in self.netns:  # the veth pairs go with their namespaces
            _ip("netns", "del", ns, check=False)
        if self._bridge_up:
            _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        self.log(f"fleet torn down in {time.monotonic() - t0:.1f} s")

    @staticmethod
    def _kill_container(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the container's init (its whole PID namespace dies with it), then nspawn."""
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(10)
