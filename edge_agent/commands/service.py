"""The command dispatcher service (``name = "commands"``): queue, workers, replies.

On the **network thread** (:meth:`CommandService.on_message`, quick; the PUBLISH is acked when it
returns) every request passes the checks of :mod:`edge_agent.commands.admission`, in order, and the first
failure is the reply; an admitted request then needs queue room, is persisted as 'received' and queued.

A **worker thread** then persists 'running', calls the handler, persists 'done' with the result and
puts the reply in the outbox. Nothing refused has an effect: refusals happen before the handler, and
the handler is only ever called by a worker for a row it moved from 'received' to 'running'.

Replies are :mod:`edge_agent.commands.replies` (refusal replies are rate-limited: a flood of junk must
not become a flood of replies). The clock is checked by admission; the seen-id store stops replays."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent import codec
from edge_agent.commands import signing
from edge_agent.commands.admission import (
    ANONYMOUS,
    BUILD_TIME_FLOOR,
    Admission,
    Admitted,
    Job,
    RateLimits,
    Refusal,
    Refused,
    Repeat,
    ReplyTo,
    check_size,
    decode,
    iso,
    reply_topic,
)
from edge_agent.commands.registry import Registry, config_warnings, load_user_commands
from edge_agent.commands.replies import RefusalLog, reply_message
from edge_agent.commands.store import CommandStore, Record
from edge_agent.errors import CommandError
from edge_agent.host import AgentControl, Disposition, Host, InMessage
from edge_agent.transport.topics import cmd_filters, parse_cmd_topic

log = logging.getLogger("edge_agent.commands")

__all__ = ["BUILD_TIME_FLOOR", "EX_RESTART", "STORE_FILE", "CommandContext", "CommandService", "Job", "ReplyTo"]

STORE_FILE = "commands.db"
EX_RESTART = 75  # EX_TEMPFAIL: non-zero so systemd's Restart=on-failure starts the agent again


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


class CommandService:
    name = "commands"
    stops_after_drain = False

    def __init__(self, host: Host, *, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        cfg = host.config
        self.cfg = cfg.commands
        self.device = cfg.device.id
        self.groups = list(cfg.device.groups)
        self.prefix = cfg.mqtt.topic_prefix
        self.clock = clock
        self.registry = Registry()
        self.store = CommandStore(host.state_dir / STORE_FILE, clock=clock)
        verifier = signing.Verifier([(k.name, k.public_key, list(k.allow)) for k in self.cfg.keys])
        self.admission = Admission(self.cfg, self.device, self.groups, self.registry, verifier, self.store)
        self.limits = RateLimits(self.cfg.rate, float(self.cfg.burst))
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.cfg.queue)
        self._command_sets: list[Callable[[Registry], None]] = []
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._refusal_log = RefusalLog()
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
        # Subscribed before the transport starts (re-applied after every reconnect): a command redelivered
        # right after CONNACK finds its handler, which holds it until start() has run (see on_message).
        for f in cmd_filters(self.prefix, self.device, self.groups):
            host.subscribe(f, self._matches, self.on_message, qos=1)

    def add_commands(self, register: Callable[[Registry], None]) -> None:
        """``register(registry)`` adds another service's commands when this service starts."""
        self._command_sets.append(register)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the command store (the App does this in its own open(), before anything connects)."""
        self.store.open()

    def start(self) -> None:
        self.open()
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
        for level, line in config_warnings(self.cfg, self.registry):
            log.log(level, "%s", line)
        now = self.clock()
        if self.clock_sane(now):
            self.store.raise_time_floor(now)
            self.store.prune(now - self.cfg.max_clock_skew)
        else:
            log.warning("the clock looks wrong (%s, before %s): signed commands are refused until it is "
                        "synchronised or a fresh signed command confirms it", iso(now), iso(self.admission.floor()))
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

    def clock_sane(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return now >= self.admission.floor()

    # ------------------------------------------------------------------ network thread
    def _matches(self, topic: str) -> bool:
        return parse_cmd_topic(self.prefix, topic) is not None

    def on_message(self, msg: InMessage) -> Disposition:
        """Admit, persist 'received' and queue; quick (network thread).

        Before start() has finished (a redelivery right after CONNACK) it waits for it; if the service is
        stopping or never starts, the message is left unacknowledged (DEFER, never acked) so the broker
        delivers it again to the next connection, rather than acked and lost.
        """
        if not self._ready.wait(30.0) or self._stop.is_set():
            log.warning("command on %s left unacknowledged: the command service is %s; the broker will "
                        "deliver it again", msg.topic, "stopping" if self._stop.is_set() else "not started")
            return Disposition.DEFER
        parsed = parse_cmd_topic(self.prefix, msg.topic)
        if parsed is None:
            return Disposition.ACK
        kind, target, name = parsed
        payload = bytes(msg.payload)
        is_json = (msg.content_type or "").lower().startswith("application/json") or payload[:1] == b"{"
        reply = ReplyTo(reply_topic(self.prefix, self.device, msg.response_topic, name), msg.correlation_data,
                        is_json, name)
        self.counters["received"] += 1
        # Without the bytes "kid" a request can only be anonymous: its bucket is charged before decoding,
        # so a flood of junk costs a byte search each, not a decode. Anything else is charged after
        # admission, to the bucket of the key whose signature verified, or to the anonymous one.
        charged = len(payload) > self.cfg.max_payload or b"kid" not in payload
        if charged and not self._rate_ok(ANONYMOUS, reply):
            return Disposition.ACK
        try:
            check_size(payload, self.cfg.max_payload)
            req = decode(payload, is_json, self.cfg.max_payload)
        except Refused as e:
            if charged or self._rate_ok(ANONYMOUS, reply):
                self._refuse(None, reply, e)
            return Disposition.ACK
        outcome = self.admission.admit(req, kind, target, name, reply, self.clock())
        if not charged and not self._rate_ok(outcome.source, reply):
            return Disposition.ACK
        match outcome:
            case Admitted(job, digest, issued_at, _, confirms):
                self._enqueue(job, digest, issued_at, confirms)
            case Repeat(record, digest):
                self._repeat(record, digest, reply)
            case Refusal(cmd_id, error):
                self._refuse(cmd_id, reply, error)
        return Disposition.ACK

    def _rate_ok(self, source: str, reply: ReplyTo) -> bool:
        if self.limits.take(source):
            return True
        self.counters["rate_limited"] += 1
        self._refuse(None, reply, Refused("rate_limited", f"more than {self.cfg.rate:g} commands/s from {source}"),
                     force_reply=self.limits.may_reply(source))
        return False

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

    def _enqueue(self, job: Job, digest: bytes | None, issued_at: float | None, confirms_clock: bool) -> None:
        if self.queue.full():
            self._refuse(job.id, job.reply, Refused("busy", f"{self.cfg.queue} commands already waiting"))
            return
        spec = self.registry.get(job.name)
        # Unsigned read-only commands are not persisted: anonymous traffic never touches the disk, and
        # running a read-only command twice is harmless.
        read_only_unsigned = job.operator == "unsigned" and spec is not None and spec.read_only
        if not read_only_unsigned and job.id is not None and digest is not None:
            if not self._persist(job, digest):
                return
            if job.operator != "unsigned" and issued_at is not None:
                self._trust_clock(float(issued_at), confirms_clock)
        log.info("command %s %s from %s accepted (%s %s)", job.name, job.id or "-", job.operator, job.kind,
                 job.target)
        self.queue.put_nowait(job)

    def _trust_clock(self, issued_at: float, confirms_clock: bool) -> None:
        now = self.clock()
        if confirms_clock:
            log.warning("the clock floor %s was ahead of the device clock (%s), which a signed command "
                        "issued at %s confirms: floor reset", iso(self.store.time_floor()), iso(now), iso(issued_at))
            self.store.reset_time_floor(now)
        self.store.raise_trusted_floor(min(issued_at, now))

    def _persist(self, job: Job, digest: bytes) -> bool:
        """Store the job as 'received'; False if its id was taken meanwhile (answered as a repeat)."""
        assert job.id is not None
        self._adds += 1
        if self._adds % 1000 == 0 and self.clock_sane():
            self.store.prune(self.clock() - self.cfg.max_clock_skew)
        expires = job.expires_at if job.expires_at is not None else self.clock() + self.cfg.max_lifetime
        if not self.store.add(job.id, job.name, digest, expires, job.stored(), job.reply.as_dict()):
            rec = self.store.get(job.id)
            if rec is not None:
                self._repeat(rec, digest, job.reply)
            return False
        job.persisted = True
        return True

    def _refuse(self, cmd_id: str | None, reply: ReplyTo, err: CommandError, force_reply: bool = True) -> None:
        self.counters["refused"] += 1
        self.refusals[err.code] = self.refusals.get(err.code, 0) + 1
        self._refusal_log.log(cmd_id, reply.name, err)
        if force_reply:
            self.send_reply(cmd_id, reply, {"status": "error", "error": {"code": err.code, "message": err.message}})
        else:
            self.counters["replies_suppressed"] += 1

    # ------------------------------------------------------------------ replies
    def send_reply(self, cmd_id: str | None, reply: ReplyTo, outcome: dict[str, Any]) -> None:
        try:
            self.host.put(reply_message(self.device, cmd_id, reply.topic, reply.name, reply.json,
                                        reply.correlation, outcome))
        except Exception as e:
            log.error("reply to %s not stored: %s", reply.topic, e)

    # ------------------------------------------------------------------ workers
    def _resume(self) -> None:
        for rec in self.store.received():
            try:
                job = Job.resumed(rec, self.device)
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
        ctx = CommandContext(self.host, self.host.control, self, job.id, job.name, job.operator, job.kind,
                             job.target, job.reply)
        t0 = time.monotonic()
        outcome = self._run(job, ctx)
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

    def _run(self, job: Job, ctx: CommandContext) -> dict[str, Any]:
        """Call the handler; its result or error as the reply's outcome."""
        spec = self.registry.get(job.name)
        if spec is None:
            return {"status": "error", "error": {"code": "unknown_command", "message": f"no command {job.name!r}"}}
        with self._lock:  # workers run concurrently
            self.counters["executed"] += 1
        try:
            outcome = {"status": "ok", "result": spec.fn(ctx, **job.args)}
            codec.encode(outcome)  # must be serialisable before it is stored
        except CommandError as e:
            return {"status": "error", "error": {"code": e.code, "message": e.message}}
        except Exception as e:
            log.exception("command %s %s failed", job.name, job.id)
            return {"status": "error", "error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}
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
