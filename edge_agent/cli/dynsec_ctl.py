"""Talk to Mosquitto's dynamic security plugin through ``mosquitto_ctrl`` (a subprocess).

Secrets never appear on a command line (``/proc/<pid>/cmdline`` is readable by every local user):

* the admin's user name and password go into a private options file (mode 0600, in a private temp
  directory handed to mosquitto_ctrl as ``$XDG_CONFIG_HOME``; its ``-o FILE`` did not work with mosquitto_ctrl 2.0.11);
* a client's password is written to mosquitto_ctrl's stdin, where ``createClient``/``setClientPassword``
  read it when ``-p`` is not given.

mosquitto_ctrl 2.0.11 exits 0 even when the plugin refuses a command (it prints
``<command>: Error: <reason>`` on stderr), so its stderr is read: any ``Error`` line raises
:class:`DynsecError` with the plugin's reason.

Every mosquitto_ctrl reads the plugin's answers on one shared topic, so two of them run at the same time
against one broker can each take the other's answer (seen with Ansible's parallel forks: one host's
``users add`` failed with another host's "Group is already in this role"). Calls to one broker are
therefore serialised through a lock file in the temp directory, and an answer naming another command is
reported as such instead of being taken for ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.dynsec import Role

_ERROR = re.compile(r"(?:(\w+): )?Error: (.*)")
_CONN_ERROR = re.compile(r"Connection error: (.*)")
_FIELD = re.compile(r"(\w[\w ]*):\s*(.*)")
_PRIORITY = re.compile(r"(.*?)\s*\(priority: -?\d+\)")


def _line(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The first whole line of ``text`` that ``pattern`` matches (fullmatch: no ``$`` pitfalls)."""
    return next((m for line in text.splitlines() if (m := pattern.fullmatch(line.strip()))), None)


class DynsecError(RuntimeError):
    """The plugin refused a command (``reason`` is its message, e.g. 'Client already exists')."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"{command}: {reason}")
        self.command = command
        self.reason = reason


class BrokerError(RuntimeError):
    """mosquitto_ctrl could not reach or log in to the broker."""


@dataclass
class ClientInfo:
    username: str
    client_id: str = ""
    roles: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    disabled: bool = False


def find_ctrl() -> str:
    exe = shutil.which("mosquitto_ctrl")
    if exe is None:
        raise FileNotFoundError("mosquitto_ctrl is not installed: sudo apt-get install -y mosquitto-clients")
    return exe


class DynsecCtl:
    """One admin session's worth of ``mosquitto_ctrl dynsec`` calls (use as a context manager)."""

    def __init__(self, host: str, port: int, admin_user: str, admin_password: str, *,
                 cafile: str | None = None, timeout: float = 15.0) -> None:
        if not admin_password:
            raise ValueError("the admin password is empty")
        if any(c.isspace() for c in admin_user + admin_password) or not admin_user:
            raise ValueError("the admin user name and password must be non-empty and contain no whitespace "
                             "(mosquitto_ctrl's options file is split on spaces)")
        self.exe = find_ctrl()
        self.timeout = timeout
        opts = [f"-h {host}", f"-p {int(port)}", f"-u {admin_user}", f"-P {admin_password}"]
        if cafile:
            opts.append(f"--cafile {cafile}")
        self._opts = "\n".join(opts) + "\n"
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        safe_host = re.sub(r"[^\w.-]", "_", host)
        self._lock_path = Path(tempfile.gettempdir()) / f"edge-agent-dynsec-{safe_host}-{int(port)}.lock"

    @contextlib.contextmanager
    def _one_at_a_time(self) -> Iterator[None]:
        """Hold the per-broker lock file (no lock if it cannot be opened: e.g. another user's file)."""
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def open(self) -> DynsecCtl:
        """Write the admin options file (0600, in a private temp dir); idempotent."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="edge-dynsec-")
            os.chmod(self._dir.name, 0o700)
            fd = os.open(Path(self._dir.name) / "mosquitto_ctrl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._opts)
        return self

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> DynsecCtl:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ raw
    def run(self, *args: str, stdin: str | None = None) -> str:
        """``mosquitto_ctrl dynsec <args>``: stdout, or DynsecError / BrokerError."""
        self.open()
        assert self._dir is not None
        env = {**os.environ, "XDG_CONFIG_HOME": self._dir.name}
        try:
            with self._one_at_a_time():
                r = subprocess.run([self.exe, "dynsec", *args], input=stdin if stdin is not None else "",
                                   capture_output=True, text=True, timeout=self.timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise BrokerError(f"mosquitto_ctrl dynsec {args[0]} did not finish within {self.timeout} s") from e
        conn = _line(_CONN_ERROR, r.stderr)
        if conn:
            raise BrokerError(f"cannot log in to the broker as the dynsec admin: {conn.group(1)}")
        err = _line(_ERROR, r.stderr)
        if err:
            reason = err.group(2).strip()
            if err.group(1) is None:  # "Error: Connection refused" and other client-side failures
                raise BrokerError(f"mosquitto_ctrl: {reason}")
            if err.group(1) != args[0]:
                raise BrokerError(f"mosquitto_ctrl dynsec {args[0]} was answered for another admin's "
                                  f"{err.group(1)} ({reason}): someone else is changing the broker's accounts "
                                  "right now; run it again")
            raise DynsecError(err.group(1), reason)
        if r.returncode != 0:
            raise BrokerError(f"mosquitto_ctrl dynsec {args[0]} exited with {r.returncode}: "
                              f"{r.stderr.strip()[-500:]}")
        return r.stdout

    def try_run(self, *args: str, ok_if: str) -> bool:
        """run(), but a refusal whose reason contains ``ok_if`` (e.g. 'already exists') returns False."""
        try:
            self.run(*args)
        except DynsecError as e:
            if ok_if.lower() in e.reason.lower():
                return False
            raise
        return True

    # ------------------------------------------------------------------ clients
    def create_client(self, username: str, password: str, client_id: str = "") -> None:
        args = ["createClient", username] + (["-c", client_id] if client_id else [])
        self.run(*args, stdin=f"{password}\n{password}\n")

    def set_password(self, username: str, password: str) -> None:
        self.run("setClientPassword", username, stdin=f"{password}\n{password}\n")

    def delete_client(self, username: str) -> None:
        self.run("deleteClient", username)

    def add_client_role(self, username: str, role: str, priority: int = 0) -> None:
        self.run("addClientRole", username, role, str(priority))

    def get_client(self, username: str) -> ClientInfo:
        return parse_client(self.run("getClient", username))

    def list_clients(self) -> list[str]:
        return [line.strip() for line in self.run("listClients").splitlines() if line.strip()]

    def clients(self) -> Iterator[ClientInfo]:
        for name in self.list_clients():
            yield self.get_client(name)

    # ------------------------------------------------------------------ roles and groups
    def ensure_role(self, role: Role) -> bool:
        """Create the role (True) or complete an existing one (False); its ACLs are added either way
        ('already exists' is fine), so a half-created role from an interrupted run is repaired."""
        created = self.try_run("createRole", role.name, ok_if="already exists")
        for acl in role.acls:
            self.try_run("addRoleACL", role.name, *acl.args(), ok_if="already exists")
        return created

    def delete_role(self, name: str) -> bool:
        return self.try_run("deleteRole", name, ok_if="not found")

    def ensure_group(self, name: str, role: str) -> bool:
        created = self.try_run("createGroup", name, ok_if="already exists")
        self.try_run("addGroupRole", name, role, ok_if="already")
        return created

    def add_group_client(self, group: str, username: str) -> bool:
        return self.try_run("addGroupClient", group, username, ok_if="already")

    def remove_group_client(self, group: str, username: str) -> bool:
        return self.try_run("removeGroupClient", group, username, ok_if="not")


def _names(value: str) -> list[str]:
    """'a (priority: -1)' -> 'a'; mosquitto_ctrl prints one name per line, continued with spaces."""
    names = []
    for v in (v.strip() for v in value.split("\n")):
        m = _PRIORITY.fullmatch(v)
        if v:
            names.append(m.group(1) if m else v)
    return names


def parse_client(text: str) -> ClientInfo:
    """The text ``mosquitto_ctrl dynsec getClient`` prints (``Key: value`` lines, lists continued on
    lines indented past the colon)."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        m = _FIELD.fullmatch(line)
        if m and not line.startswith(" "):
            key = m.group(1).strip().lower()
            fields[key] = m.group(2)
        elif key and line.strip():
            fields[key] += "\n" + line.strip()
    if "username" not in fields:
        raise BrokerError(f"unexpected getClient output: {text[:200]!r}")
    return ClientInfo(username=fields["username"].strip(), client_id=fields.get("clientid", "").strip(),
                      roles=_names(fields.get("roles", "")), groups=_names(fields.get("groups", "")),
                      disabled=fields.get("disabled", "").strip().lower() == "true")

