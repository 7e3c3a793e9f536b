"""The fleet roster: which device holds which Ed25519 public key (and its groups), signed by an operator.

Devices never trust the first key they see. A message's sender is believed only if its signature
verifies with the key the **roster** lists for it, and the roster itself is believed only if an operator
key the device already trusts for commands (``commands.keys``, allowed ``roster.publish``) signed it.

The document is JSON (operators read it), published retained on ``<prefix>/_roster`` and/or pinned by
path (``messaging.roster``)::

    {"v": 1, "fleet": "edge", "version": 7, "issued_at": 1764316800.25,
     "devices": {"alice": {"key": "<base64 32 bytes>", "groups": ["ops"]}, ...},
     "kid": "<operator key id>", "sig": "<base64 Ed25519 signature>"}

The signature covers :func:`canonical`: ``msgpack(["edge-agent-roster/1", fleet, version, issued_at,
[[device, key, [groups sorted]], ... sorted by device]])`` (floats as float64, strings UTF-8). ``fleet``
is the topic prefix, so a roster signed for another fleet is refused. Rotation and revocation are a new
roster with a higher ``version``: a device keeps the highest version it has verified (also on disk, so a
restart cannot be fed an older one), refuses an older one, and ignores the same one seen again.

Public API (also for ``edge-agent users``): :func:`new_roster`, :meth:`Roster.with_device`,
:meth:`Roster.without_device`, :func:`sign_roster`, :func:`verify_roster`, :func:`read_roster`,
:func:`write_roster`, :func:`add_device`, :func:`remove_device`, :func:`roster_topic`,
:class:`RosterBook` (the device side's current roster).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from edge_agent.commands.signing import Signer, allowed, decode_public_key, key_id
from edge_agent.errors import EdgeAgentError
from edge_agent.fsutil import atomic_write
from edge_agent.ids import check_device_id, check_id, is_device_id, is_id

log = logging.getLogger("edge_agent.roster")

DOMAIN = "edge-agent-roster/1"
ROSTER_VERSION = 1  # the document format ("v")
ROSTER_LEVEL = "_roster"
PERMISSION = "roster.publish"  # what an operator key's ``allow`` must permit
MAX_ROSTER_BYTES = 4 * 1024 * 1024


class RosterError(EdgeAgentError, ValueError):
    """A roster that is malformed, not signed by a trusted operator, for another fleet, or stale."""


def roster_topic(prefix: str) -> str:
    """The retained topic the roster is published on."""
    return f"{prefix}/{ROSTER_LEVEL}"


@dataclass(frozen=True)
class DeviceEntry:
    key: bytes  # Ed25519 public key, 32 bytes
    groups: tuple[str, ...] = ()

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode()


@dataclass(frozen=True)
class Roster:
    fleet: str
    version: int
    issued_at: float
    devices: Mapping[str, DeviceEntry] = field(default_factory=dict)
    kid: str = ""  # set on a signed/verified roster
    sig: bytes = b""

    def key(self, dev: str) -> bytes | None:
        e = self.devices.get(dev)
        return e.key if e else None

    def with_device(self, dev: str, public_key: str | bytes, groups: Iterable[str] = ()) -> Roster:
        """A new (unsigned) version with ``dev`` added or its key/groups replaced (rotation)."""
        check_device_id(dev, "device")
        raw = decode_public_key(public_key) if isinstance(public_key, str) else bytes(public_key)
        if len(raw) != 32:
            raise RosterError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
        gs = tuple(sorted({check_id(g, "group") for g in groups}))
        return self._next({**self.devices, dev: DeviceEntry(raw, gs)})

    def without_device(self, dev: str) -> Roster:
        """A new (unsigned) version without ``dev`` (revocation); RosterError if it is not listed."""
        if dev not in self.devices:
            raise RosterError(f"device {dev!r} is not in the roster (version {self.version})")
        return self._next({k: v for k, v in self.devices.items() if k != dev})

    def _next(self, devices: Mapping[str, DeviceEntry]) -> Roster:
        return replace(self, version=self.version + 1, issued_at=round(time.time(), 3), devices=dict(devices),
                       kid="", sig=b"")

    def as_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "v": ROSTER_VERSION, "fleet": self.fleet, "version": self.version, "issued_at": self.issued_at,
            "devices": {d: {"key": e.key_b64, "groups": list(e.groups)} for d, e in sorted(self.devices.items())}}
        if self.sig:
            doc.update(kid=self.kid, sig=base64.b64encode(self.sig).decode())
        return doc


def new_roster(fleet: str) -> Roster:
    """An empty roster (version 0) for the fleet whose topic prefix is ``fleet``."""
    return Roster(check_id(fleet, "fleet (topic prefix)"), 0, round(time.time(), 3), {})


def canonical(r: Roster) -> bytes:
    body = [DOMAIN, r.fleet, r.version, float(r.issued_at),
            [[d, e.key_b64, sorted(e.groups)] for d, e in sorted(r.devices.items())]]
    return msgpack.packb(body, use_bin_type=True, use_single_float=False)


def sign_roster(r: Roster, signer: Signer) -> bytes:
    """The signed JSON document (bytes, as published and written to files)."""
    signed = replace(r, kid=signer.kid, sig=signer.key.sign(canonical(r)).signature)
    return (json.dumps(signed.as_document(), indent=1, sort_keys=True) + "\n").encode()


def parse_roster(payload: bytes) -> Roster:
    """The roster in a JSON document, signature not checked; RosterError naming what is wrong."""
    if len(payload) > MAX_ROSTER_BYTES:
        raise RosterError(f"roster of {len(payload)} bytes exceeds {MAX_ROSTER_BYTES}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise RosterError(f"roster is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("v") != ROSTER_VERSION:
        raise RosterError(f"not a roster document (expected a JSON object with \"v\": {ROSTER_VERSION})")
    fleet, version, issued, devs = doc.get("fleet"), doc.get("version"), doc.get("issued_at"), doc.get("devices")
    if not is_id(fleet) or not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RosterError("roster needs a fleet (topic prefix) and a version (integer >= 0)")
    if not isinstance(issued, int | float) or isinstance(issued, bool) or not isinstance(devs, dict):
        raise RosterError("roster needs issued_at (seconds) and devices (an object)")
    devices: dict[str, DeviceEntry] = {}
    for d, e in devs.items():
        if not is_device_id(d) or not isinstance(e, dict) or not isinstance(e.get("key"), str):
            raise RosterError(f"roster device {d!r}: needs a device id and {{\"key\": base64, \"groups\": [...]}}")
        groups = e.get("groups", [])
        if not isinstance(groups, list) or not all(is_id(g) for g in groups):
            raise RosterError(f"roster device {d!r}: groups must be a list of ids")
        try:
            devices[d] = DeviceEntry(decode_public_key(e["key"]), tuple(groups))
        except ValueError as err:
            raise RosterError(f"roster device {d!r}: {err}") from None
    sig = doc.get("sig", "")
    try:
        raw_sig = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        raise RosterError("roster signature is not base64") from None
    kid = doc.get("kid", "")
    return Roster(fleet, version, float(issued), devices, kid if isinstance(kid, str) else "", raw_sig)


def verify_roster(payload: bytes, trusted: Sequence[Any], fleet: str | None = None) -> Roster:
    """The roster in ``payload`` if an operator key in ``trusted`` (``OperatorKey``s: name, public_key,
    allow) permitted ``roster.publish`` signed it (and it is for ``fleet``, when given); else RosterError."""
    r = parse_roster(payload)
    if not r.sig:
        raise RosterError(f"roster version {r.version} is not signed")
    if fleet is not None and r.fleet != fleet:
        raise RosterError(f"roster is for fleet {r.fleet!r}, this device is in {fleet!r}")
    for k in trusted:
        raw = decode_public_key(k.public_key)
        if key_id(raw) != r.kid:
            continue
        if not allowed(list(k.allow), PERMISSION):
            raise RosterError(f"operator key {k.name!r} is not allowed {PERMISSION!r}")
        try:
            VerifyKey(raw).verify(canonical(r), r.sig)
        except BadSignatureError:
            raise RosterError(f"roster version {r.version}: signature does not verify") from None
        return r
    raise RosterError(f"roster version {r.version} is signed by key id {r.kid!r}, not a trusted operator key "
                      "(commands.keys)")


def read_roster(path: str | os.PathLike[str]) -> Roster:
    """The roster in a file, signature not checked (operator side; devices use :func:`verify_roster`)."""
    try:
        return parse_roster(Path(path).read_bytes())
    except OSError as e:
        raise RosterError(f"cannot read roster {path}: {e}") from None


def write_roster(path: str | os.PathLike[str], signed: bytes) -> None:
    """Write a signed document atomically."""
    atomic_write(Path(path), signed)


def _edit(path: str | os.PathLike[str], fleet: str, signer: Signer, change: Any) -> Roster:
    p = Path(path)
    base = read_roster(p) if p.exists() else new_roster(fleet)
    if base.fleet != fleet:
        raise RosterError(f"{p} is the roster of fleet {base.fleet!r}, not {fleet!r}")
    signed = sign_roster(change(base), signer)
    write_roster(p, signed)
    return parse_roster(signed)


def add_device(path: str | os.PathLike[str], dev: str, public_key: str | bytes, signer: Signer, *,
               groups: Iterable[str] = (), fleet: str = "edge") -> Roster:
    """Add (or re-key) ``dev`` in the roster file at ``path`` (created if missing), bump the version,
    sign with ``signer`` and write it back; return the new roster."""
    return _edit(path, fleet, signer, lambda r: r.with_device(dev, public_key, groups))


def remove_device(path: str | os.PathLike[str], dev: str, signer: Signer, *, fleet: str = "edge") -> Roster:
    """Remove ``dev`` from the roster file (revocation), bump the version, sign and write it back."""
    return _edit(path, fleet, signer, lambda r: r.without_device(dev))


class RosterBook:
    """The device side: the newest verified roster (kept in ``store``, a file in the state dir)."""

    def __init__(self, trusted: Sequence[Any], fleet: str, store: Path) -> None:
        self._trusted = list(trusted)
        self._fleet = fleet
        self._store = store
        self._lock = threading.Lock()
        self._current: Roster | None = None
        self._raw = b""

    def open(self, pinned: str | os.PathLike[str] | None = None) -> None:
        """Load the stored roster and the pinned file (if any); keep the newer. RosterError if the pinned
        file does not verify (a configuration mistake must not pass silently)."""
        if self._store.exists():
            try:
                self.offer(self._store.read_bytes(), persist=False)
            except (RosterError, OSError) as e:
                log.warning("stored roster %s ignored: %s", self._store, e)
        if pinned:
            try:
                payload = Path(pinned).read_bytes()
            except OSError as e:
                raise RosterError(f"messaging.roster {pinned}: {e}") from None
            r = verify_roster(payload, self._trusted, self._fleet)
            if self._current is None or r.version > self._current.version:
                self.offer(payload)

    def offer(self, payload: bytes, *, persist: bool = True) -> bool:
        """Take ``payload`` if it verifies and is newer; False if it is the version already held;
        RosterError if it does not verify or is older."""
        r = verify_roster(payload, self._trusted, self._fleet)
        with self._lock:
            cur = self._current
            if cur is not None and r.version <= cur.version:
                if r.version == cur.version and canonical(r) == canonical(cur):
                    return False
                raise RosterError(f"roster version {r.version} refused: version {cur.version} is held")
            self._current, self._raw = r, payload
        if persist:
            try:
                write_roster(self._store, payload)
            except OSError as e:
                log.warning("roster version %d not stored in %s: %s", r.version, self._store, e)
        log.info("roster version %d: %d device(s)", r.version, len(r.devices))
        return True

    @property
    def current(self) -> Roster | None:
        return self._current

    def key(self, dev: str) -> bytes | None:
        r = self._current
        return r.key(dev) if r is not None else None
