"""A FUSE file system that forgets what was never fsynced: a power cut for tests (LazyFS's idea, in Python).

``python -m tests.powercut_fs BACKING MOUNTPOINT`` mounts BACKING at MOUNTPOINT (fusepy over libfuse2, in
its own process; :class:`PowerCutFS` runs it). Every operation passes through to BACKING, except file
*content*:

* **Data and size are volatile until fsync.** A ``write()`` or ``truncate()`` lands in an in-memory
  overlay (4 KiB pages plus the file's logical size), the page cache of this disk. Reads (``read()``,
  ``mmap`` page faults, ``stat``'s size) see the overlay on top of BACKING. ``fsync``/``fdatasync`` of a
  file writes its overlay to BACKING (the only way file content reaches BACKING) and empties it.
  ``close()`` does not sync (as on a real file system). A clean unmount writes every overlay (a clean
  shutdown syncs).
* **Namespace operations are journalled** (``namespace="journal"``, the default): create, mkdir, unlink,
  rmdir, rename, link, symlink are applied to BACKING at once and logged with what undoes them; the
  next fsync of any file or directory commits the log (as an fsync commits ext4's journal, with every
  namespace operation before it, in order); a cut undoes what was not committed, newest first (a removed
  or replaced file comes back with its synced content: it is kept by a hard link in ``BACKING.grave``
  until the commit). Harsher than ext4 (no 5 s commit timer), kinder than the letter of POSIX (which
  promises a name only after an fsync of its directory). ``namespace="at_once"`` makes them durable at
  once. Attributes (chmod, chown, utimens) are durable at once in both.
* **mmap works** (no direct_io): SQLite's ``-shm`` is mapped shared; the kernel writes its dirty pages
  back through ``write()`` into the overlay, so it is lost at a cut, which is harmless (SQLite rebuilds
  the -shm from the WAL when it is the first to open the database).
* POSIX locks are left to the kernel (no ``lock`` operation: the kernel then locks locally), which is
  right for processes on one machine.
* ``sync(2)``/``syncfs(2)`` never reach a FUSE file system, so they save nothing here (the agent uses
  neither); ``O_SYNC`` writes do (the kernel follows them with an fsync).

**The cut.** A line ``cut`` on the process's stdin takes the global lock (no operation runs after it),
prints what it throws away (one JSON line on stdout: files and bytes not synced) and exits at once without
writing anything: BACKING then holds exactly what a disk holds after the power went off with every
unsynced page lost (LazyFS's "clear cache" fault). ``cut torn SEED`` first writes a random half of the
unsynced pages (and applies a pending truncation or not, at random), the other possible outcome of a power
cut in the middle of writeback: the file may end inside a page that was never synced.

After a cut the mount point is dead (ENOTCONN) until :meth:`PowerCutFS.cut` lazily unmounts it; mount
BACKING again (a new :class:`PowerCutFS`) to "boot" from what survived.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096


@dataclass
class Inode:
    """The unsynced state of one backing inode; ``fd`` is a private O_RDWR descriptor of the backing file."""

    fd: int
    size: int  # the logical size (what stat and reads see)
    floor: int  # bytes of BACKING at or past ``floor`` read as zeros (a truncation not yet synced)
    pages: dict[int, bytearray] = field(default_factory=dict)  # dirty pages by index
    opens: int = 0
    name: str = ""  # the path it was last opened by (for the reports)

    @property
    def dirty(self) -> bool:
        return bool(self.pages) or self.size != os.fstat(self.fd).st_size or self.floor < self.size


class LossyOps:
    """The file system's operations (see the module docstring). One mutex: simple and enough for tests.
    fusepy registers every operation a class has an attribute for: xattrs, ``lock`` (the kernel then
    locks locally) and fallocate are left out on purpose, and no attribute may carry such a name."""

    use_ns = True  # utimens gets nanoseconds

    def __call__(self, op: str, *args: Any) -> Any:
        fn = getattr(self, op, None)
        if fn is None:
            raise _err(errno.ENOSYS)
        return fn(*args)

    def __init__(self, root: str, namespace: str = "journal") -> None:
        self.root = os.path.realpath(root)
        self.mutex = threading.RLock()  # not "lock": fusepy would take it for the FUSE lock operation
        self.inodes: dict[int, Inode] = {}
        self.handles: dict[int, int] = {}  # fh -> ino
        self.next_fh = 1
        if namespace not in ("journal", "at_once"):
            raise ValueError(f"namespace must be 'journal' or 'at_once', not {namespace!r}")
        self.namespace = namespace
        self.journal: list[tuple[str, ...]] = []  # namespace operations not yet committed, with their undo
        self.grave = self.root + ".grave"  # same file system as BACKING: removed files are kept by a hard link
        self.buried = 0
        shutil.rmtree(self.grave, ignore_errors=True)  # left by a cut: its files were linked back or are gone

    # ------------------------------------------------------------------ helpers
    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # namespace journal ("journal" mode): every namespace operation is applied to BACKING at once and
    # logged with what undoes it; a commit (any fsync or directory fsync, like ext4's journal commit)
    # forgets the log; a cut undoes it, newest first. A removed or replaced file is kept by a hard link in
    # the grave until the commit, so the undo brings back its inode with its synced content.
    def _log(self, *entry: str) -> None:
        if self.namespace == "journal":
            self.journal.append(entry)

    def _bury(self, p: str) -> str:
        if self.namespace != "journal":
            return ""
        os.makedirs(self.grave, exist_ok=True)
        self.buried += 1
        grave = os.path.join(self.grave, str(self.buried))
        os.link(p, grave, follow_symlinks=False)
        return grave

    def _commit(self) -> None:
        for entry in self.journal:
            grave = entry[-1] if entry[0] in ("unlinked", "renamed") else ""
            if grave:
                with contextlib.suppress(OSError):
                    os.unlink(grave)
        self.journal.clear()
        for ino in list(self.inodes):  # the overlays of files that are gone now
            self._forget(ino)

    def _undo(self) -> int:
        undone = 0
        for entry in reversed(self.journal):
            kind, p = entry[0], entry[1]
            try:
                if kind == "created":
                    os.unlink(p)
                elif kind == "mkdir":
                    os.rmdir(p)
                elif kind == "rmdir":
                    os.mkdir(p)
                elif kind == "unlinked":
                    os.link(entry[2], p, follow_symlinks=False)
                elif kind == "renamed":
                    new, grave = entry[2], entry[3]
                    os.rename(new, p)
                    if grave:
                        os.link(grave, new, follow_symlinks=False)
                undone += 1
            except OSError as e:
                print(f"powercut_fs: cannot undo {entry}: {e}", file=sys.stderr)
        return undone

    def _inode(self, ino: int, path: str | None = None, fd: int | None = None) -> Inode:
        node = self.inodes.get(ino)
        if node is None:
            if fd is None:
                assert path is not None
                fd = os.open(path, os.O_RDWR)
            else:
                fd = os.dup(fd)
            size = os.fstat(fd).st_size
            node = self.inodes[ino] = Inode(fd=fd, size=size, floor=size)
        return node

    def _forget(self, ino: int) -> None:
        """Drop an inode nobody has open any more: clean, or removed from the namespace (never synced)."""
        node = self.inodes.get(ino)
        if node is None or node.opens > 0:
            return
        st = os.fstat(node.fd)
        if st.st_nlink == 0 or not node.dirty:
            os.close(node.fd)
            del self.inodes[ino]

    def _read_backing(self, node: Inode, offset: int, size: int) -> bytes:
        """BACKING's bytes as the overlay sees them: zeros past a pending truncation."""
        end = min(offset + size, node.floor)
        data = os.pread(node.fd, end - offset, offset) if end > offset else b""
        return data + b"\0" * (size - len(data))

    def _page(self, node: Inode, idx: int) -> bytearray:
        page = node.pages.get(idx)
        if page is None:
            page = node.pages[idx] = bytearray(self._read_backing(node, idx * PAGE, PAGE))
        return page

    def _truncate(self, node: Inode, length: int) -> None:
        if length < node.size:
            for idx in [i for i in node.pages if i * PAGE >= length]:
                del node.pages[idx]
            last = node.pages.get(length // PAGE)
            if last is not None:
                cut = length % PAGE
                last[cut:] = b"\0" * (PAGE - cut)
            node.floor = min(node.floor, length)
        node.size = length

    def _sync(self, node: Inode, keep: float = 1.0, rng: random.Random | None = None) -> None:
        """Write the overlay to BACKING (``keep`` < 1: only a random part of it, for a torn cut)."""
        rng = rng or random.Random(0)
        backing = os.fstat(node.fd).st_size
        if node.floor < backing and (keep >= 1.0 or rng.random() < keep):
            os.ftruncate(node.fd, node.floor)
            backing = node.floor
        for idx in sorted(node.pages):
            if keep < 1.0 and rng.random() >= keep:
                continue
            start = idx * PAGE
            data = bytes(node.pages[idx][: max(0, min(PAGE, node.size - start))])
            if data:
                os.pwrite(node.fd, data, start)
                backing = max(backing, start + len(data))
        if keep >= 1.0:
            os.ftruncate(node.fd, node.size)
            node.pages.clear()
            node.floor = node.size
        # no os.fsync of BACKING: the machine under the test keeps its power; what matters is that
        # nothing but an fsync (or a clean unmount) ever writes file content to BACKING

    def unsynced(self) -> dict[str, Any]:
        """What a cut now would lose: files, dirty pages, their bytes, and the pages per file."""
        files = [n for n in self.inodes.values() if n.dirty]
        return {"files": len(files), "pages": sum(len(n.pages) for n in files),
                "bytes": sum(len(n.pages) for n in files) * PAGE,
                "by_file": {n.name: len(n.pages) for n in files},
                "namespace_ops": len(self.journal)}

    def cut(self, torn_seed: int | None) -> None:
        """Power off: hold the lock for good, report what is lost, optionally write half of it, exit."""
        self.mutex.acquire()
        report: dict[str, Any] = {"lost": self.unsynced(), "torn": torn_seed is not None}
        if torn_seed is not None:
            rng = random.Random(torn_seed)
            for node in self.inodes.values():
                self._sync(node, keep=0.5, rng=rng)
        report["undone"] = self._undo()
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        os._exit(0)

    # ------------------------------------------------------------------ namespace (journalled or at once)
    def access(self, path: str, amode: int) -> None:
        if not os.access(self._p(path), amode):
            raise _err(errno.EACCES)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._p(path), uid, gid)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            if fh is not None and fh in self.handles:
                st = os.fstat(self.inodes[self.handles[fh]].fd)
            else:
                st = os.lstat(self._p(path))
            d = {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                                             "st_atime", "st_mtime", "st_ctime", "st_blocks")}
            node = self.inodes.get(st.st_ino)
            if node is not None:
                d["st_size"] = node.size
                d["st_blocks"] = (node.size + 511) // 512
            return d

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._p(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def mknod(self, path: str, mode: int, dev: int) -> None:
        with self.mutex:
            os.mknod(self._p(path), mode, dev)
            self._log("created", self._p(path))

    def mkdir(self, path: str, mode: int) -> None:
        with self.mutex:
            os.mkdir(self._p(path), mode)
            self._log("mkdir", self._p(path))

    def rmdir(self, path: str) -> None:
        with self.mutex:
            os.rmdir(self._p(path))
            self._log("rmdir", self._p(path))

    def symlink(self, target: str, source: str) -> None:
        with self.mutex:
            os.symlink(source, self._p(target))
            self._log("created", self._p(target))

    def link(self, target: str, source: str) -> None:
        with self.mutex:
            os.link(self._p(source), self._p(target))
            self._log("created", self._p(target))

    def unlink(self, path: str) -> None:
        p = self._p(path)
        with self.mutex:
            ino = os.lstat(p).st_ino
            grave = self._bury(p)
            os.unlink(p)
            self._log("unlinked", p, grave)
            self._forget(ino)

    def rename(self, old: str, new: str) -> None:
        po, pn = self._p(old), self._p(new)
        with self.mutex:
            try:
                st: os.stat_result | None = os.lstat(pn)
            except FileNotFoundError:
                st = None
            if self.namespace == "journal" and st is not None and os.path.isdir(pn) and not os.path.islink(pn):
                raise _err(errno.EXDEV)  # replacing a directory: not needed here, so not journalled
            grave = self._bury(pn) if st is not None else ""
            os.rename(po, pn)
            self._log("renamed", po, pn, grave)
            if st is not None:
                self._forget(st.st_ino)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        os.utime(self._p(path), ns=times)

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._p(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        with self.mutex:
            self._commit()

    # ------------------------------------------------------------------ file content (volatile until fsync)
    def _open(self, path: str, flags: int, mode: int | None) -> int:
        p = self._p(path)
        with self.mutex:
            base = flags & ~(os.O_TRUNC | os.O_APPEND | os.O_ACCMODE | os.O_DIRECT) | os.O_RDWR
            new = mode is not None and not os.path.lexists(p)
            fd = os.open(p, base, mode) if mode is not None else os.open(p, base)
            if new:
                self._log("created", p)
            try:
                node = self._inode(os.fstat(fd).st_ino, fd=fd)
            finally:
                os.close(fd)
            if flags & os.O_TRUNC:
                self._truncate(node, 0)
            node.opens += 1
            node.name = path
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = os.fstat(node.fd).st_ino
            return fh

    def open(self, path: str, flags: int) -> int:
        return self._open(path, flags, None)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self._open(path, os.O_CREAT | os.O_RDWR, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            node = self.inodes[self.handles[fh]]
            end = min(offset + size, node.size)
            out = bytearray()
            pos = offset
            while pos < end:
                idx, off = divmod(pos, PAGE)
                n = min(PAGE - off, end - pos)
                page = node.pages.get(idx)
                out += page[off:off + n] if page is not None else self._read_backing(node, pos, n)
                pos += n
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            node = self.inodes[self.handles[fh]]
            if offset > node.size:  # the hole reads as zeros
                self._truncate(node, node.size)
            pos = 0
            while pos < len(data):
                idx, off = divmod(offset + pos, PAGE)
                n = min(PAGE - off, len(data) - pos)
                self._page(node, idx)[off:off + n] = data[pos:pos + n]
                pos += n
            node.size = max(node.size, offset + len(data))
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        with self.mutex:
            if fh is not None and fh in self.handles:
                node = self.inodes[self.handles[fh]]
            else:
                p = self._p(path)
                node = self._inode(os.lstat(p).st_ino, path=p)
            self._truncate(node, length)
            if fh is None:
                self._forget(os.fstat(node.fd).st_ino)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        with self.mutex:
            self._sync(self.inodes[self.handles[fh]])
            self._commit()  # like ext4: an fsync commits the journal, every namespace operation in it

    def flush(self, path: str, fh: int) -> None:
        return None  # close() is not a sync

    def release(self, path: str, fh: int) -> None:
        with self.mutex:
            ino = self.handles.pop(fh)
            self.inodes[ino].opens -= 1
            self._forget(ino)

    def destroy(self, path: str) -> None:
        """A clean unmount: everything reaches BACKING."""
        with self.mutex:
            for node in self.inodes.values():
                self._sync(node)
            self._commit()


def _err(code: int) -> OSError:
    from fuse import FuseOSError

    return FuseOSError(code)


def serve(backing: str, mountpoint: str, namespace: str) -> None:
    from fuse import FUSE

    ops = LossyOps(backing, namespace)

    def control() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["cut"]:
                ops.cut(int(words[2]) if len(words) > 2 and words[1] == "torn" else None)
            elif words[:1] == ["unsynced"]:
                with ops.mutex:
                    sys.stdout.write(json.dumps(ops.unsynced()) + "\n")
                    sys.stdout.flush()

    threading.Thread(target=control, name="powercut-control", daemon=True).start()
    # use_ino: stat shows BACKING's inode numbers (the outbox notices a replaced file by st_ino);
    # hard_remove: unlink removes at once (no .fuse_hidden files left behind by a cut)
    FUSE(ops, mountpoint, foreground=True, nothreads=False, use_ino=True, hard_remove=True,
         attr_timeout=0.0, entry_timeout=0.0, fsname="powercut")


# ---------------------------------------------------------------------- the test side


def unavailable() -> str | None:
    """Why the file system cannot run here, or None."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "needs root (mounting FUSE without fusermount)"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as e:
        return f"fusepy/libfuse2 not usable ({e}): pip install fusepy; apt-get install libfuse2"
    return None


class PowerCutFS:
    """One mount of the lossy file system: ``backing`` at ``mnt``, served by a child process."""

    def __init__(self, backing: Path, mnt: Path, namespace: str = "journal") -> None:
        self.backing, self.mnt = backing, mnt
        backing.mkdir(parents=True, exist_ok=True)
        mnt.mkdir(parents=True, exist_ok=True)
        self.log = open(mnt.parent / f"{mnt.name}.fs.log", "ab")  # noqa: SIM115
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.powercut_fs", str(backing), str(mnt), namespace],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=root,
                                     env={**os.environ, "PYTHONPATH": str(root)})
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"powercut_fs did not mount {mnt}: {self.log_text()[-2000:]}")
            time.sleep(0.02)
        self.mounted = True

    def log_text(self) -> str:
        self.log.flush()
        return (self.mnt.parent / f"{self.mnt.name}.fs.log").read_text(errors="replace")

    def unsynced(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"unsynced\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def cut(self, torn_seed: int | None = None) -> dict[str, Any]:
        """The power goes off: everything not fsynced is lost (``torn_seed``: half of it is written)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"cut\n" if torn_seed is None else f"cut torn {torn_seed}\n".encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(10)
        self._umount(lazy=True)
        if not line:
            raise RuntimeError(f"powercut_fs died without a report: {self.log_text()[-2000:]}")
        return dict(json.loads(line))

    def unmount(self) -> None:
        """A clean unmount (every overlay is written)."""
        if not self.mounted:
            return
        for _ in range(40):
            if subprocess.run(["umount", str(self.mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            self._umount(lazy=True)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self._kill()
        self.mounted = False
        self.log.close()

    def _umount(self, lazy: bool) -> None:
        subprocess.run(["umount", *(["-l"] if lazy else []), str(self.mnt)], capture_output=True)
        self.mounted = False

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        self._umount(lazy=True)

    def __enter__(self) -> PowerCutFS:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            self.unmount()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "journal")
