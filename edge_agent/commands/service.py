"""The command dispatcher service (``name = "commands"``).

On the **network thread** (:meth:`CommandService.on_message`, must be quick; the PUBLISH is acked when
it returns) every request goes through, in this order, and the first failure is the reply::

    topic/target -> size cap -> bounded decode (msgpack limits, ext refused; JSON depth/size limits)
    -> rate limit per source -> request shape -> known command -> signature (Ed25519) or unsigned
    allow-list -> key allow-list -> argument schema -> known id? (stored result, never re-run)
    -> clock sane / not yet valid / expired -> queue room -> persist 'received' -> queue

A **worker thread** then persists 'running', calls the handler, persists 'done' with the result and
puts the reply in the outbox. Nothing refused has an effect: refusals happen before the handler, and
the handler is only ever called by a worker for a row it moved from 'received' to 'running'.

Why replies go through the outbox: they survive a broker outage or an agent restart like any event.
Why refusal replies are themselves rate-limited: a flood of junk must not turn into a flood of
``event``-class replies that would crowd telemetry out of the outbox and the link.

Clock (a Pi has no RTC): the clock is *sane* when it is past :data:`BUILD_TIME_FLOOR` and past the
store's persisted time floor. While it is not, every time-bound (signed) command is refused with
``clock_not_synced``; unsigned read-only commands (``ping``, ``status``) still work and ``status``
shows the clock state. The persisted seen-id store stops replays whatever the clock says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent import codec
from edge_agent.commands import signing
from edge_agent.commands.registry import Registry, load_user_commands
from edge_agent.commands.store import CommandStore, Record
from edge_agent.errors import CommandError, DecodeError
from edge_agent.host import AgentControl, Disposition, Host, InMessage, Outgoing
from edge_agent.transport.topics import cmd_filters, cmd_reply_topic, parse_cmd_topic

log = logging.getLogger("edge_agent.commands")

STORE_FILE = "commands.db"
#: 2026-01-01T00:00:00Z. A clock before this has certainly not been set (Pi without RTC at boot).
BUILD_TIME_FLOOR = 1767225600.0
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
REQUEST_KEYS = frozenset({"id", "name", "args", "issued_at", "expires_at", "kid", "sig"})
REPLY_TTL = 600.0
MAX_DEPTH = 16
EX_RESTART = 75  # EX_TEMPFAIL: non-zero so systemd's Restart=on-failure starts the agent again


class Refused(CommandError):
    """A refusal decided before anything ran."""


# ---------------------------------------------------------------- small helpers

class _Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.capacity = rate, burst
        self.tokens, self.t = burst, time.monotonic()
        self.last_reply = 0.0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def may_reply(self) -> bool:
        """At most one reply per second for requests refused by this bucket."""
        now = time.monotonic()
        if now - self.last_reply >= 1.0:
            self.last_reply = now
            return True
        return False


def _check_shape(obj: Any, depth: int = 0) -> None:
    """Refuse deep nesting (JSON has no msgpack-style limits; msgpack allows ~1000 levels)."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise DecodeError("map keys must be strings")
            _check_shape(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_shape(v, depth + 1)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise DecodeError("NaN and infinities are refused")


def _bad_constant(name: str) -> Any:
    raise DecodeError(f"JSON constant {name} refused")


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes | bytearray):
        return base64.b64encode(bytes(o)).decode()
    return repr(o)


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


@dataclass
class CommandContext:
    """What a handler gets besides its arguments."""

    host: Host
    control: AgentControl
    service: CommandService
    id: str | None
    name: str
    operator: str
    kind: str
    target: str
    reply: ReplyTo
    log: logging.Logger = field(default_factory=lambda: log)
    #: Set by a handler to run something once its reply is stored (e.g. agent.restart exits the process).
    after_reply: Callable[[], None] | None = None

    def accepted(self, result: Any = None) -> None:
        """Tell the operator a long command started; the final status follows."""
        out: dict[str, Any] = {"status": "accepted"}
        if result is not None:
            out["result"] = result
        self.service.send_reply(self.id, self.reply, out)


# ---------------------------------------------------------------- the service

class CommandService:
    name = "commands"

    def __init__(self, host: Host, *, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        cfg = host.config
        self.cfg = cfg.commands
        self.device = cfg.device.id
        self.groups = list(cfg.device.groups)
        self.prefix = cfg.mqtt.topic_prefix
        self.clock = clock
        self.registry = Registry()
        self.verifier = signing.Verifier([(k.name, k.public_key, list(k.allow)) for k in self.cfg.keys])
        self.store = CommandStore(host.state_dir / STORE_FILE, clock=clock)
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.cfg.queue)
        self._buckets: dict[str, _Bucket] = {}
        self._command_sets: list[Callable[[Registry], None]] = []
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._log_window = (0.0, 0)
        self._adds = 0
        self._waiters: dict[str, list[ReplyTo]] = {}  # repeats of commands still running: final reply owed
        self.counters: dict[str, int] = {"received": 0, "executed": 0, "refused": 0, "replayed": 0,
                                         "rate_limited": 0, "replies_suppressed": 0}
        self.refusals: dict[str, int] = {}
        self._lock = threading.Lock()
        #: Called by agent.restart after the reply is out; replaced in tests.
        self.exit_process: Callable[[int], None] = self._exit_process
        self.started = False
        self._ready = threading.Event()
        # Handler and subscriptions now, before the transport starts: the subscriptions go out with the
        # CONNECT-time SUBSCRIBE (the transport re-applies them after every reconnect), and a command the
        # broker redelivers from our session right after CONNACK finds its handler, which holds it until
        # start() has run (see on_message) instead of it being acked unhandled.
        for f in cmd_filters(self.prefix, self.device, self.groups):
            host.subscribe(f, self._matches, self.on_message, qos=1)

    def add_commands(self, register: Callable[[Registry], None]) -> None:
        """``register(registry)`` adds another service's commands when this service starts."""
        self._command_sets.append(register)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.started:
            return
        from edge_agent.commands import builtins

        builtins.register(self.registry)
        for register in self._command_sets:
            try:
                register(self.registry)
            except Exception:
                log.exception("%s could not register its commands", register)
        load_user_commands(self.registry, list(self.cfg.modules))
        self._warn_config()
        now = self.clock()
        if self.clock_sane(now):
            self.store.raise_time_floor(now)
            self.store.prune(now - self.cfg.max_clock_skew)
        else:
            log.warning("the clock looks wrong (%s, before %s): signed commands are refused until it is "
                        "synchronised", _iso(now), _iso(self._floor()))
        if self.store.interrupted:
            log.warning("commands interrupted by the last stop (not run again): %s",
                        ", ".join(self.store.interrupted))
        for i in range(self.cfg.workers):
            t = threading.Thread(target=self._work, name=f"commands-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        self._resume()
        self.started = True
        self._ready.set()
        log.info("commands: listening on %s (%d command(s), %d operator key(s))",
                 ", ".join(cmd_filters(self.prefix, self.device, self.groups)), len(self.registry.names()),
                 len(self.cfg.keys))

    def _warn_config(self) -> None:
        if self.cfg.insecure:
            log.warning("commands.insecure = true: UNSIGNED STATE-CHANGING COMMANDS ARE ACCEPTED from "
                        "anyone who can publish to this device's command topics")
        for name in self.cfg.unsigned:
            spec = self.registry.get(name)
            if spec is None:
                log.warning("commands.unsigned lists %r, which is not a known command", name)
            elif not spec.read_only and not self.cfg.insecure:
                log.warning("commands.unsigned lists %r, which changes state: it still needs a signature "
                            "(only read-only commands may be unsigned unless commands.insecure = true)", name)
        if not self.cfg.keys and not self.cfg.insecure:
            log.info("commands: no operator keys configured; only unsigned read-only commands are accepted")

    def stop(self) -> None:
        self._stop.set()
        for _ in self._workers:
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._workers:
            if t is not threading.current_thread():
                t.join(5.0)
        self.store.close()

    # ------------------------------------------------------------------ clock
    def _floor(self) -> float:
        return max(BUILD_TIME_FLOOR, self.store.time_floor())

    def clock_sane(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return now >= self._floor()

    # ------------------------------------------------------------------ network thread
    def _matches(self, topic: str) -> bool:
        return parse_cmd_topic(self.prefix, topic) is not None

    def on_message(self, msg: InMessage) -> Disposition:
        """Validate, persist 'received' and queue; quick (network thread).

        Before start() has finished (a redelivery right after CONNACK) it waits for it; if the service is
        stopping or never starts, the message is left unacknowledged (DEFER, never acked) so the broker
        delivers it again to the next connection, rather than acked and lost.
        """
        if not self._ready.wait(30.0) or self._stop.is_set():
            log.warning("command on %s left unacknowledged: the command service is %s; the broker will "
                        "deliver it again", msg.topic, "stopping" if self._stop.is_set() else "not started")
            return Disposition.DEFER
        self._on_message(msg)
        return Disposition.ACK

    def _on_message(self, msg: InMessage) -> None:
        parsed = parse_cmd_topic(self.prefix, msg.topic)
        if parsed is None:
            return
        kind, target, name = parsed
        payload: bytes = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        is_json = (msg.content_type or "").lower().startswith("application/json") or \
            payload[:1] == b"{"
        reply = ReplyTo(self._reply_topic(msg.response_topic, name), msg.correlation_data, is_json, name)
        self.counters["received"] += 1

        too_large = len(payload) > self.cfg.max_payload
        if too_large or b"kid" not in payload:
            # Without a key id the request can only be anonymous: charge the bucket before decoding, so
            # a flood of junk costs a byte search each, not a decode.
            source = "anonymous"
            if not self._rate_ok(source, reply):
                return
            req, problem = self._try_decode(payload, is_json, too_large)
        else:
            req, problem = self._try_decode(payload, is_json, too_large)
            source = self._source(req)
            if not self._rate_ok(source, reply):
                return
        if problem is not None:
            self._refuse(None, reply, problem)
            return
        cmd_id = req.get("id") if isinstance(req, dict) and isinstance(req.get("id"), str) else None
        try:
            job, digest = self._admit(req, kind, target, name, reply)
        except CommandError as e:
            self._refuse(cmd_id if cmd_id and ID_RE.match(cmd_id) else None, reply, e)
            return
        self._enqueue(job, digest, req)

    def _rate_ok(self, source: str, reply: ReplyTo) -> bool:
        bucket = self._bucket(source)
        if bucket.take():
            return True
        self.counters["rate_limited"] += 1
        self._refuse(None, reply, Refused("rate_limited", f"more than {self.cfg.rate:g} commands/s from {source}"),
                     force_reply=bucket.may_reply())
        return False

    def _try_decode(self, payload: bytes, is_json: bool, too_large: bool) -> tuple[Any, CommandError | None]:
        if too_large:
            return None, Refused("too_large", f"payload of {len(payload)} bytes exceeds commands.max_payload "
                                              f"({self.cfg.max_payload})")
        try:
            return self._decode(payload, is_json), None
        except DecodeError as e:
            return None, Refused("decode_error", str(e))

    def _reply_topic(self, response_topic: str | None, name: str) -> str:
        """The request's Response Topic, unless it is unusable or inside another device's namespace (a
        request must not make this device publish on, say, another device's telemetry topic)."""
        if response_topic and len(response_topic) <= 512 and not any(c in response_topic for c in "+#\x00"):
            parts = response_topic.split("/")
            if parts[0] != self.prefix or (len(parts) > 1 and parts[1] in (self.device, "_ctl")):
                return response_topic
        safe = name if name and all(c not in name for c in "+#/\x00") else "invalid"
        return cmd_reply_topic(self.prefix, self.device, safe)

    def _decode(self, payload: bytes, is_json: bool) -> Any:
        if is_json:
            try:
                obj = json.loads(payload.decode("utf-8"), parse_constant=_bad_constant)
                # "\ud800" escapes decode to lone surrogates, which no UTF-8 encoder (msgpack for the
                # signature's canonical bytes, SQLite for the command store) accepts: refuse them here
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except DecodeError:
                raise
            except (UnicodeError, ValueError, RecursionError) as e:
                raise DecodeError(f"bad JSON: {type(e).__name__}: {e}") from None
        else:
            obj = codec.decode(payload, max_bytes=self.cfg.max_payload, max_str=4096,
                               max_bin=self.cfg.max_payload, max_array=1000, max_map=64)
        _check_shape(obj)
        return obj

    def _source(self, req: Any) -> str:
        """Rate-limit key: a known operator key id, else one shared anonymous bucket (bounded)."""
        if isinstance(req, dict):
            kid = req.get("kid")
            if isinstance(kid, str) and self.verifier.operator(kid) is not None:
                return f"key:{kid}"
        return "anonymous"

    def _bucket(self, source: str) -> _Bucket:
        b = self._buckets.get(source)
        if b is None:
            b = self._buckets[source] = _Bucket(self.cfg.rate, float(self.cfg.burst))
        return b

    def _admit(self, req: Any, kind: str, target: str, name: str, reply: ReplyTo) -> tuple[Job, bytes | None]:
        if (kind == "device" and target != self.device) or (kind == "group" and target not in self.groups):
            raise Refused("wrong_target", f"{kind} {target!r} is not this device ({self.device})")
        if not isinstance(req, dict):
            raise Refused("bad_request", f"a command is a map, got {type(req).__name__}")
        unknown = sorted(str(k) for k in req if k not in REQUEST_KEYS)
        if unknown:
            raise Refused("bad_request", f"unknown field(s) {', '.join(unknown)} (known: "
                                         f"{', '.join(sorted(REQUEST_KEYS))})")
        cmd_id = req.get("id")
        if cmd_id is not None and not (isinstance(cmd_id, str) and ID_RE.match(cmd_id)):
            raise Refused("bad_request", "id must be 1-64 of letters, digits, '.', '_', ':', '-'")
        if "name" in req and req["name"] != name:
            raise Refused("bad_request", f"name {req['name']!r} does not match the topic ({name!r})")
        args = req.get("args", {})
        if not isinstance(args, dict):
            raise Refused("bad_request", f"args must be a map, got {type(args).__name__}")
        issued, expires = req.get("issued_at"), req.get("expires_at")
        for key, v in (("issued_at", issued), ("expires_at", expires)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise Refused("bad_request", f"{key} must be a number (seconds since the epoch)")
        spec = self.registry.get(name)
        if spec is None:
            raise Refused("unknown_command", f"no command {name!r}")

        sig = req.get("sig")
        operator = "unsigned"
        digest: bytes | None = None
        if sig is not None:
            kid = req.get("kid")
            if not isinstance(kid, str):
                raise Refused("bad_request", "a signed command needs 'kid' (key id)")
            if cmd_id is None or issued is None or expires is None:
                raise Refused("bad_request", "a signed command needs id, issued_at and expires_at")
            if isinstance(sig, str):
                try:
                    sig = base64.b64decode(sig, validate=True)
                except (binascii.Error, ValueError):
                    raise Refused("bad_signature", "sig is not base64") from None
            if not isinstance(sig, bytes):
                raise Refused("bad_signature", "sig must be bytes (msgpack) or base64 text (JSON)")
            message = signing.canonical(kind, target, cmd_id, name, args, issued, expires)
            operator = self.verifier.verify(kid, message, sig)
            allow = self.verifier.operator(kid)
            if allow is None or not signing.allowed(allow[1], name):
                raise Refused("not_allowed", f"operator {operator!r} may not run {name!r}")
            digest = hashlib.sha256(message).digest()
        else:
            if req.get("kid") is not None:
                raise Refused("bad_request", "'kid' without 'sig'")
            read_only_ok = name in self.cfg.unsigned and spec.read_only
            if not read_only_ok and not self.cfg.insecure:
                why = "changes state" if not spec.read_only else "is not in commands.unsigned"
                raise Refused("unsigned_not_allowed", f"{name!r} {why}: it needs a valid signature")
            if cmd_id is not None:
                digest = hashlib.sha256(signing.canonical(kind, target, cmd_id, name, args, issued,
                                                          expires)).digest()

        clean = spec.schema.validate(args)
        if cmd_id is not None:
            rec = self.store.get(cmd_id)
            if rec is not None:
                self._repeat(rec, digest, reply)
                raise _Handled()
        now = self.clock()
        if sig is not None or expires is not None:
            if not self.clock_sane(now):
                raise Refused("clock_not_synced", f"device clock reads {_iso(now)}, before {_iso(self._floor())};"
                                                  " time-bound commands are refused until it is synchronised")
            if issued is not None and expires is not None and not 0 < expires - issued <= self.cfg.max_lifetime:
                raise Refused("bad_request", f"validity (expires_at - issued_at) must be in (0, "
                                             f"{self.cfg.max_lifetime:g}] s")
            if issued is not None and issued > now + self.cfg.max_clock_skew:
                raise Refused("not_yet_valid", f"issued_at is {issued - now:.0f} s in the future (more than "
                                               f"commands.max_clock_skew); check the operator's and the "
                                               "device's clocks")
            if expires is not None and expires <= now:
                raise Refused("expired", f"expired {now - expires:.0f} s ago")
        job = Job(cmd_id, name, clean, reply, kind, target, operator, persisted=False,
                  expires_at=float(expires) if expires is not None else None)
        return job, digest

    def _repeat(self, rec: Record, digest: bytes | None, reply: ReplyTo) -> None:
        if digest is not None and rec.digest != digest:
            self._refuse(rec.id, reply, Refused("id_reused", f"command id {rec.id} was already used for a "
                                                             "different command"))
            return
        self.counters["replayed"] += 1
        with self._lock:
            if rec.state != "done":
                latest = self.store.get(rec.id)
                rec = latest if latest is not None else rec
            if rec.state != "done":
                # still queued or running in this process: the final result follows when it is done
                self._waiters.setdefault(rec.id, []).append(reply)
        if rec.state == "done" and rec.result is not None:
            log.warning("command %s %s repeated: stored result returned, not run again", rec.name, rec.id)
            self.send_reply(rec.id, reply, {**rec.result, "replay": True})
        else:
            log.warning("command %s %s repeated while %s: not run again", rec.name, rec.id, rec.state)
            self.send_reply(rec.id, reply, {"status": "accepted", "replay": True,
                                            "result": {"state": rec.state}})

    def _enqueue(self, job: Job, digest: bytes | None, req: dict[str, Any]) -> None:
        if self.queue.full():
            self._refuse(job.id, job.reply, Refused("busy", f"{self.cfg.queue} commands already waiting"))
            return
        spec = self.registry.get(job.name)
        # Unsigned read-only commands are not persisted: anonymous traffic never touches the disk, and
        # running a read-only command twice is harmless.
        read_only_unsigned = job.operator == "unsigned" and spec is not None and spec.read_only
        if not read_only_unsigned and job.id is not None and digest is not None:
            self._adds += 1
            if self._adds % 1000 == 0 and self.clock_sane():
                self.store.prune(self.clock() - self.cfg.max_clock_skew)
            expires = job.expires_at if job.expires_at is not None else self.clock() + self.cfg.max_lifetime
            stored = {"args": job.args, "kind": job.kind, "target": job.target, "operator": job.operator,
                      "expires_at": job.expires_at}
            if not self.store.add(job.id, job.name, digest, expires, stored, job.reply.as_dict()):
                rec = self.store.get(job.id)
                if rec is not None:
                    self._repeat(rec, digest, job.reply)
                return
            job.persisted = True
            if job.operator != "unsigned" and self.clock_sane():
                issued = req.get("issued_at")
                if isinstance(issued, int | float):
                    self.store.raise_time_floor(min(float(issued), self.clock()))
        log.info("command %s %s from %s accepted (%s %s)", job.name, job.id or "-", job.operator, job.kind,
                 job.target)
        self.queue.put_nowait(job)

    def _refuse(self, cmd_id: str | None, reply: ReplyTo, err: CommandError, force_reply: bool = True) -> None:
        if isinstance(err, _Handled):
            return
        self.counters["refused"] += 1
        self.refusals[err.code] = self.refusals.get(err.code, 0) + 1
        self._log_refusal(cmd_id, reply.name, err)
        if force_reply:
            self.send_reply(cmd_id, reply, {"status": "error", "error": {"code": err.code, "message": err.message}})
        else:
            self.counters["replies_suppressed"] += 1

    def _log_refusal(self, cmd_id: str | None, name: str, err: CommandError) -> None:
        """At most 20 refusal lines per second; the rest are summarised (a flood must not flood the log)."""
        now = time.monotonic()
        start, n = self._log_window
        if now - start >= 1.0:
            if n > 20:
                log.warning("commands: %d more refusal(s) not logged in the last second", n - 20)
            start, n = now, 0
        n += 1
        self._log_window = (start, n)
        if n <= 20:
            log.warning("command %s %s refused: %s: %s", name[:64], cmd_id or "-", err.code, err.message[:300])

    # ------------------------------------------------------------------ replies
    def send_reply(self, cmd_id: str | None, reply: ReplyTo, outcome: dict[str, Any]) -> None:
        body = {"id": cmd_id, "device": self.device, "name": reply.name, **outcome}
        if reply.json:
            payload = json.dumps(body, default=_json_default, separators=(",", ":")).encode()
            ctype = "application/json"
        else:
            payload = codec.encode(body)
            ctype = "application/msgpack"
        props: dict[str, Any] = {"content_type": ctype}
        if reply.correlation is not None:
            props["correlation_data"] = bytes(reply.correlation)
        try:
            self.host.put(Outgoing(topic=reply.topic, stream=f"cmd-reply/{reply.name}", raw=payload,
                                         cls="event", props=props, ttl=REPLY_TTL))
        except Exception as e:
            log.error("reply to %s not stored: %s", reply.topic, e)

    # ------------------------------------------------------------------ workers
    def _resume(self) -> None:
        for rec in self.store.received():
            try:
                req = rec.request or {}
                job = Job(rec.id, rec.name, dict(req.get("args") or {}), ReplyTo.from_dict(rec.reply or {}),
                          str(req.get("kind", "device")), str(req.get("target", self.device)),
                          str(req.get("operator", "?")), persisted=True, expires_at=req.get("expires_at"))
            except Exception as e:
                self.store.set_done(rec.id, {"status": "error", "error": {"code": "internal",
                                                                          "message": f"cannot resume: {e}"}})
                continue
            if job.expires_at is not None and job.expires_at <= self.clock():
                if self.store.set_running(rec.id):
                    outcome = {"status": "error", "error": {"code": "expired",
                                                            "message": "expired before the agent could run it"}}
                    self.store.set_done(rec.id, outcome)
                    self.send_reply(rec.id, job.reply, outcome)
                continue
            log.info("resuming command %s %s received before the last stop", rec.name, rec.id)
            try:
                self.queue.put(job, timeout=5.0)
            except queue.Full:
                log.warning("command queue full while resuming; %s waits for the next start", rec.id)
                break

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self.queue.get()
            if job is None or self._stop.is_set():
                return
            try:
                self.execute(job)
            except Exception:
                log.exception("command %s %s failed outside its handler", job.name, job.id)

    def execute(self, job: Job) -> dict[str, Any] | None:
        if job.persisted and job.id is not None and not self.store.set_running(job.id):
            return None  # already taken (cannot happen with one store, kept as the at-most-once guard)
        spec = self.registry.get(job.name)
        ctx = CommandContext(self.host, self.host.control, self, job.id, job.name, job.operator, job.kind,
                             job.target, job.reply)
        t0 = time.monotonic()
        outcome: dict[str, Any]
        if spec is None:
            outcome = {"status": "error", "error": {"code": "unknown_command", "message": f"no command {job.name!r}"}}
        else:
            with self._lock:  # workers run concurrently
                self.counters["executed"] += 1
            try:
                result = spec.fn(ctx, **job.args)
                outcome = {"status": "ok", "result": result}
                codec.encode(outcome)  # must be serialisable before it is stored
            except CommandError as e:
                outcome = {"status": "error", "error": {"code": e.code, "message": e.message}}
            except Exception as e:
                log.exception("command %s %s failed", job.name, job.id)
                outcome = {"status": "error", "error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}
        log.info("command %s %s from %s: %s in %.0f ms", job.name, job.id or "-", job.operator, outcome["status"],
                 (time.monotonic() - t0) * 1000)
        waiters: list[ReplyTo] = []
        if job.persisted and job.id is not None:
            with self._lock:
                self.store.set_done(job.id, outcome)
                waiters = self._waiters.pop(job.id, [])
        self.send_reply(job.id, job.reply, outcome)
        for w in waiters:
            self.send_reply(job.id, w, {**outcome, "replay": True})
        if ctx.after_reply is not None:
            ctx.after_reply()
        return outcome

    # ------------------------------------------------------------------ restart
    def _exit_process(self, code: int) -> None:
        """Stop the agent cleanly (the reply is drained like any backlog), then exit non-zero."""
        def run() -> None:
            try:
                self.host.control.shutdown(min(5.0, self.host.config.agent.stop_timeout or 5.0))
            finally:
                logging.shutdown()
                os._exit(code)
        threading.Thread(target=run, name="agent-restart", daemon=False).start()

    def describe(self) -> dict[str, Any]:
        return {"commands": self.registry.names(), "counters": dict(self.counters),
                "refusals": dict(self.refusals), "store": self.store.counts()}


class _Handled(CommandError):
    """Internal: the request was answered already (a repeat)."""

    def __init__(self) -> None:
        super().__init__("handled", "")


def _iso(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return repr(t)
