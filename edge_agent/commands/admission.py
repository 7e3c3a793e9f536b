"""Admission: what every command request passes on the network thread before anything runs.

One small function per check, applied in this order by :meth:`Admission.admit` (the first failure is the
reply)::

    size cap -> bounded decode                                   (the service, before admit())
    target -> request shape -> known command -> signature (Ed25519) or unsigned allow-list
    -> key allow-list -> argument schema -> replay (known id: stored result, never re-run)
    -> clock sane / not yet valid / expired
    -> rate limit per source                                     (the service, on the outcome's ``source``)

Rate limits: a request is charged to an operator key's bucket only once its signature has verified
(``source`` of the outcome); everything else (no ``kid``, an unknown ``kid``, a ``kid`` with a bad
signature) shares the one anonymous bucket, so spoofing a public key id cannot use up that operator's
budget. A request without the bytes ``kid`` can only be anonymous and is charged before it is decoded.

A check raises :class:`Refused` (or the :class:`~edge_agent.errors.CommandError` of the verifier or
the schema); :meth:`Admission.admit` returns a value: :class:`Admitted`, :class:`Repeat` (the id is
known: answered from the store) or :class:`Refusal`.

Clock (a Pi has no RTC): the clock is *sane* when it is past :data:`BUILD_TIME_FLOOR` and past the
store's two persisted floors. While it is not, every time-bound (signed) command is refused with
``clock_not_synced``; unsigned read-only commands (``ping``, ``status``) still work.

* the **trusted floor** (hard): the largest ``min(issued_at, clock)`` of an admitted signed command. Only
  an operator's signature moves it, so a wrong device clock cannot push it into the future.
* the **clock floor** (soft): the device clock at a start where it looked sane. It catches a clock that
  went back, but a clock that was once *ahead* (a bad RTC, a wrong NTP answer) would push it into the
  future; so it is recoverable: a verified signed command whose ``issued_at`` is newer than the trusted
  floor (so not a replay of anything this device has admitted) and within ``commands.max_clock_skew`` of
  the device clock confirms the device clock and resets the clock floor to it (``Admitted.confirms_clock``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from edge_agent import codec
from edge_agent.commands import signing
from edge_agent.commands.registry import CommandSpec, Registry
from edge_agent.commands.store import CommandStore, Record
from edge_agent.config import CommandsConfig
from edge_agent.errors import CommandError, DecodeError
from edge_agent.ids import ID_RULE, is_id
from edge_agent.ratelimit import TokenBucket
from edge_agent.transport.topics import cmd_reply_topic

#: 2026-01-01T00:00:00Z. A clock before this has certainly not been set (Pi without RTC at boot).
BUILD_TIME_FLOOR = 1767225600.0
REQUEST_KEYS = frozenset({"id", "name", "args", "issued_at", "expires_at", "kid", "sig"})
MAX_DEPTH = 16
ANONYMOUS = "anonymous"


class Refused(CommandError):
    """A refusal decided before anything ran."""


def valid_id(cmd_id: Any) -> bool:
    """The one id rule (edge_agent.ids): a trailing newline, a '/' or a leading '_' is refused."""
    return is_id(cmd_id)


@dataclass
class ReplyTo:
    topic: str
    correlation: bytes | None
    json: bool
    name: str

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "corr": self.correlation, "json": self.json, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReplyTo:
        return cls(str(d["topic"]), d.get("corr"), bool(d.get("json")), str(d.get("name", "")))


@dataclass
class Job:
    id: str | None
    name: str
    args: dict[str, Any]
    reply: ReplyTo
    kind: str
    target: str
    operator: str
    persisted: bool
    expires_at: float | None = None

    def stored(self) -> dict[str, Any]:
        """What the command store keeps of the job (the ``request`` column) to resume it after a restart."""
        return {"args": self.args, "kind": self.kind, "target": self.target, "operator": self.operator,
                "expires_at": self.expires_at}

    @classmethod
    def resumed(cls, rec: Record, device: str) -> Job:
        """The job of a stored 'received' record (the inverse of :meth:`stored`)."""
        req = rec.request or {}
        return cls(rec.id, rec.name, dict(req.get("args") or {}), ReplyTo.from_dict(rec.reply or {}),
                   str(req.get("kind", "device")), str(req.get("target", device)), str(req.get("operator", "?")),
                   persisted=True, expires_at=req.get("expires_at"))


@dataclass(frozen=True)
class Request:
    """A request that has the right shape (fields and types), not yet checked further."""

    id: str | None
    args: dict[str, Any]
    issued_at: float | None
    expires_at: float | None
    kid: Any
    sig: Any


@dataclass(frozen=True)
class Admitted:
    job: Job
    digest: bytes | None  # what the id stands for: a repeat must be the same command
    issued_at: float | None
    source: str = ANONYMOUS  # the rate-limit bucket: "key:<kid>" only for a verified signature
    confirms_clock: bool = False  # a fresh signed command vouches for the device clock: reset the clock floor


@dataclass(frozen=True)
class Repeat:
    record: Record
    digest: bytes | None
    source: str = ANONYMOUS


@dataclass(frozen=True)
class Refusal:
    cmd_id: str | None  # echoed in the reply only when it is a valid id
    error: CommandError
    source: str = ANONYMOUS


# ---------------------------------------------------------------- before decoding

def reply_topic(prefix: str, device: str, response_topic: str | None, name: str) -> str:
    """The request's Response Topic, unless it is unusable or inside another device's namespace (a
    request must not make this device publish on, say, another device's telemetry topic).

    An operator's reply topic ``<prefix>/_ctl/<client>/reply`` gets this device's id appended: the reply
    goes to ``<prefix>/_ctl/<client>/reply/<device>``, which the broker's ACL (``pattern write
    <prefix>/_ctl/+/reply/%u``) lets only this device write, so a reply is bound to its sender and a
    compromised device cannot answer for another one (``ctl send`` checks the topic against the body)."""
    if response_topic and len(response_topic) <= 512 and not any(c in response_topic for c in "+#\x00"):
        parts = response_topic.split("/")
        if len(parts) > 1 and parts[0] == prefix and parts[1] == "_ctl":
            return f"{response_topic}/{device}"
        if parts[0] != prefix or (len(parts) > 1 and parts[1] == device):
            return response_topic
    safe = name if name and all(c not in name for c in "+#/\x00") else "invalid"
    return cmd_reply_topic(prefix, device, safe)


def check_size(payload: bytes, max_payload: int) -> None:
    if len(payload) > max_payload:
        raise Refused("too_large", f"payload of {len(payload)} bytes exceeds commands.max_payload ({max_payload})")


def decode(payload: bytes, is_json: bool, max_payload: int) -> Any:
    """Bounded decode: msgpack limits (ext types refused); JSON depth limits, no NaN, no lone surrogates."""
    try:
        obj = _decode_json(payload) if is_json else codec.decode(
            payload, max_bytes=max_payload, max_str=4096, max_bin=max_payload, max_array=1000, max_map=64)
        _check_depth(obj)
    except DecodeError as e:
        raise Refused("decode_error", str(e)) from None
    return obj


def _decode_json(payload: bytes) -> Any:
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_bad_constant)
        # "\ud800" escapes decode to lone surrogates, which no UTF-8 encoder (msgpack for the signature's
        # canonical bytes, SQLite for the command store) accepts: refuse them here
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except DecodeError:
        raise
    except (UnicodeError, ValueError, RecursionError) as e:
        raise DecodeError(f"bad JSON: {type(e).__name__}: {e}") from None
    return obj


def _check_depth(obj: Any, depth: int = 0) -> None:
    """Refuse deep nesting (JSON has no msgpack-style limits; msgpack allows ~1000 levels)."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise DecodeError("map keys must be strings")
            _check_depth(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_depth(v, depth + 1)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise DecodeError("NaN and infinities are refused")


def _bad_constant(name: str) -> Any:
    raise DecodeError(f"JSON constant {name} refused")


class RateLimits:
    """One token bucket per source (a known operator key, or all anonymous senders together)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._requests: dict[str, TokenBucket] = {}
        self._replies: dict[str, TokenBucket] = {}  # refusals for "rate_limited": one reply per second

    def take(self, source: str) -> bool:
        bucket = self._requests.get(source)
        if bucket is None:
            bucket = self._requests[source] = TokenBucket(self.rate, self.burst)
        return _take_one(bucket)

    def may_reply(self, source: str) -> bool:
        bucket = self._replies.get(source)
        if bucket is None:
            bucket = self._replies[source] = TokenBucket(1.0, 1.0)
        return _take_one(bucket)


def _take_one(bucket: TokenBucket) -> bool:
    if bucket.available() < 1.0:
        return False
    bucket.take(1.0)
    return True


# ---------------------------------------------------------------- the checks after decoding

def check_target(kind: str, target: str, device: str, groups: list[str]) -> None:
    if (kind == "device" and target != device) or (kind == "group" and target not in groups):
        raise Refused("wrong_target", f"{kind} {target!r} is not this device ({device})")


def check_shape(req: Any, name: str) -> Request:
    if not isinstance(req, dict):
        raise Refused("bad_request", f"a command is a map, got {type(req).__name__}")
    unknown = sorted(str(k) for k in req if k not in REQUEST_KEYS)
    if unknown:
        raise Refused("bad_request", f"unknown field(s) {', '.join(unknown)} "
                                     f"(known: {', '.join(sorted(REQUEST_KEYS))})")
    cmd_id = req.get("id")
    if cmd_id is not None and not valid_id(cmd_id):
        raise Refused("bad_request", f"id {req.get('id')!r} is not allowed: {ID_RULE}")
    if "name" in req and req["name"] != name:
        raise Refused("bad_request", f"name {req['name']!r} does not match the topic ({name!r})")
    args = req.get("args", {})
    if not isinstance(args, dict):
        raise Refused("bad_request", f"args must be a map, got {type(args).__name__}")
    issued, expires = req.get("issued_at"), req.get("expires_at")
    for key, v in (("issued_at", issued), ("expires_at", expires)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise Refused("bad_request", f"{key} must be a number (seconds since the epoch)")
    return Request(cmd_id, args, issued, expires, req.get("kid"), req.get("sig"))


def check_known(registry: Registry, name: str) -> CommandSpec:
    spec = registry.get(name)
    if spec is None:
        raise Refused("unknown_command", f"no command {name!r}")
    return spec


def check_signature(req: Request, kind: str, target: str, name: str,
                    verifier: signing.Verifier) -> tuple[str, bytes]:
    """A signed request: the operator's name and the digest of the signed bytes."""
    if not isinstance(req.kid, str):
        raise Refused("bad_request", "a signed command needs 'kid' (key id)")
    if req.id is None or req.issued_at is None or req.expires_at is None:
        raise Refused("bad_request", "a signed command needs id, issued_at and expires_at")
    sig = req.sig
    if isinstance(sig, str):
        try:
            sig = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("bad_signature", "sig is not base64") from None
    if not isinstance(sig, bytes):
        raise Refused("bad_signature", "sig must be bytes (msgpack) or base64 text (JSON)")
    message = signing.canonical(kind, target, req.id, name, req.args, req.issued_at, req.expires_at)
    operator = verifier.verify(req.kid, message, sig)
    allow = verifier.operator(req.kid)
    if allow is None or not signing.allowed(allow[1], name):
        raise Refused("not_allowed", f"operator {operator!r} may not run {name!r}")
    return operator, hashlib.sha256(message).digest()


def check_unsigned(req: Request, kind: str, target: str, name: str, spec: CommandSpec,
                   cfg: CommandsConfig) -> bytes | None:
    """An unsigned request: allowed only for read-only commands in ``commands.unsigned`` (or insecure)."""
    if req.kid is not None:
        raise Refused("bad_request", "'kid' without 'sig'")
    read_only_ok = name in cfg.unsigned and spec.read_only
    if not read_only_ok and not cfg.insecure:
        why = "changes state" if not spec.read_only else "is not in commands.unsigned"
        raise Refused("unsigned_not_allowed", f"{name!r} {why}: it needs a valid signature")
    if req.id is None:
        return None
    return hashlib.sha256(signing.canonical(kind, target, req.id, name, req.args, req.issued_at,
                                            req.expires_at)).digest()


def check_clock(req: Request, signed: bool, now: float, floor: float, cfg: CommandsConfig) -> None:
    """Time-bound requests (signed, or with an expiry) need a sane clock and must be valid now."""
    if not signed and req.expires_at is None:
        return
    if now < floor:
        raise Refused("clock_not_synced", f"device clock reads {iso(now)}, before {iso(floor)}; time-bound "
                                          "commands are refused until it is synchronised")
    issued, expires = req.issued_at, req.expires_at
    if issued is not None and expires is not None and not 0 < expires - issued <= cfg.max_lifetime:
        raise Refused("bad_request", f"validity (expires_at - issued_at) must be in (0, {cfg.max_lifetime:g}] s")
    if issued is not None and issued > now + cfg.max_clock_skew:
        raise Refused("not_yet_valid", f"issued_at is {issued - now:.0f} s in the future (more than "
                                       "commands.max_clock_skew); check the operator's and the device's clocks")
    if expires is not None and expires <= now:
        raise Refused("expired", f"expired {now - expires:.0f} s ago")


# ---------------------------------------------------------------- all of them

class Admission:
    """The checks after decoding, for one device; see the module docstring for the order."""

    def __init__(self, cfg: CommandsConfig, device: str, groups: list[str], registry: Registry,
                 verifier: signing.Verifier, store: CommandStore) -> None:
        self.cfg = cfg
        self.device = device
        self.groups = groups
        self.registry = registry
        self.verifier = verifier
        self.store = store

    def hard_floor(self) -> float:
        """The earliest time a sane clock can read, on the operators' word (not recoverable)."""
        return max(BUILD_TIME_FLOOR, self.store.trusted_floor())

    def floor(self) -> float:
        """The earliest time a sane clock can read: the hard floor and the device's own clock floor."""
        return max(self.hard_floor(), self.store.time_floor())

    def confirms_clock(self, req: Request, signed: bool, now: float) -> bool:
        """A verified signed request proving the device clock right although it is below the clock floor:
        issued after everything admitted so far (not a replay) and within the skew of the device clock."""
        return (signed and req.issued_at is not None and self.hard_floor() <= now < self.floor()
                and req.issued_at > self.store.trusted_floor()
                and abs(req.issued_at - now) <= self.cfg.max_clock_skew)

    def admit(self, raw: Any, kind: str, target: str, name: str, reply: ReplyTo,
              now: float) -> Admitted | Repeat | Refusal:
        source = ANONYMOUS
        try:
            check_target(kind, target, self.device, self.groups)
            req = check_shape(raw, name)
            spec = check_known(self.registry, name)
            signed = req.sig is not None
            if signed:
                operator, digest = check_signature(req, kind, target, name, self.verifier)
                source = f"key:{req.kid}"
            else:
                operator, digest = "unsigned", check_unsigned(req, kind, target, name, spec, self.cfg)
            args = spec.schema.validate(req.args)
            if req.id is not None:
                known = self.store.get(req.id)
                if known is not None:
                    return Repeat(known, digest, source)
            confirms = self.confirms_clock(req, signed, now)
            check_clock(req, signed, now, self.hard_floor() if confirms else self.floor(), self.cfg)
        except CommandError as e:
            cmd_id = raw.get("id") if isinstance(raw, dict) else None
            return Refusal(cmd_id if valid_id(cmd_id) else None, e, source)
        job = Job(req.id, name, args, reply, kind, target, operator, persisted=False,
                  expires_at=float(req.expires_at) if req.expires_at is not None else None)
        return Admitted(job, digest, req.issued_at, source, confirms)


def iso(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return repr(t)
