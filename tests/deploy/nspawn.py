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
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "systemd-nspawn --boot needs the unified cgroup v2 hierarchy"
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
