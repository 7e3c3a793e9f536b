"""The embeddable messaging API: ``from edge_agent import Agent``.

An :class:`Agent` is the daemon's :class:`edge_agent.app.App` (outbox, transport, forwarder, services)
without sensors, with the messaging service, behind a small API in the style of messaging SDKs::

    with Agent(device_id="123", host="broker.local", state_dir="/var/lib/chat-123") as agent:
        @agent.on_message
        def got(msg): print(msg.sender, msg.data); agent.mark_read([msg.id])

        @agent.on_message_status
        def status(msg): print(msg.id, msg.status)        # queued, sent, delivered, read / failed, expired

        m = agent.send("456", {"text": "hello"}, ttl=3600)
        agent.wait_status(m, "read", timeout=60)

Everything sent goes through the same durable outbox as the daemon's readings, so a send never blocks
on the network and survives a restart; everything sent and received is kept in the local history.
Callbacks run on one dedicated thread (never on the MQTT network thread), in arrival order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge_agent import config as config_mod
from edge_agent.app import App
from edge_agent.config import Config
from edge_agent.errors import ConfigError
from edge_agent.messaging.envelope import check_id
from edge_agent.messaging.history import ConvSummary, Message
from edge_agent.messaging.presence import Presence
from edge_agent.messaging.service import MessagingError, MessagingService
from edge_agent.transport.mqtt import ConnectionStatus

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Agent", "AsyncAgent", "ConnectionStatus", "ConvSummary", "Message", "MessagingError", "Presence"]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def build_config(config: str | os.PathLike[str] | Config | None = None, *, device_id: str | None = None,
                 host: str | None = None, port: int | None = None, state_dir: str | os.PathLike[str] | None = None,
                 groups: Iterable[str] | None = None, topic_prefix: str | None = None,
                 username: str | None = None, password: str | None = None,
                 settings: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """A validated Config from a file (or an existing Config) plus keyword overrides.

    Overrides are merged into the TOML document *before* validation, so they get exactly the checks
    and error messages of the config file (``device.id: 'a/b' is not allowed: ...``).
    """
    over: dict[str, Any] = {}
    for section, key, val in (("device", "id", device_id), ("mqtt", "host", host), ("mqtt", "port", port),
                              ("storage", "dir", None if state_dir is None else str(state_dir)),
                              ("mqtt", "topic_prefix", topic_prefix), ("mqtt", "username", username),
                              ("mqtt", "password", password),
                              ("device", "groups", None if groups is None else list(groups))):
        if val is not None:
            over.setdefault(section, {})[key] = val
    if settings:
        over = _merge(over, {k: dict(v) for k, v in settings.items()})
    over = _merge(over, {"messaging": {"enabled": True}})
    if isinstance(config, Config):
        if len(over) > 1:
            raise MessagingError("pass either a Config object or keyword settings, not both")
        return config if config.messaging.enabled else dataclasses.replace(
            config, messaging=dataclasses.replace(config.messaging, enabled=True))
    if config is None:
        return config_mod.build(over, source="<Agent keywords>")
    path = Path(config)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e}"]) from None
    return config_mod.build(over, text, str(path))


class Agent:
    """A messaging endpoint: see the module docstring. Thread-safe."""

    def __init__(self, config: str | os.PathLike[str] | Config | None = None, *, device_id: str | None = None,
                 host: str | None = None, port: int | None = None, state_dir: str | os.PathLike[str] | None = None,
                 groups: Iterable[str] | None = None, topic_prefix: str | None = None,
                 username: str | None = None, password: str | None = None,
                 settings: Mapping[str, Mapping[str, Any]] | None = None, with_sensors: bool = False) -> None:
        self.cfg = build_config(config, device_id=device_id, host=host, port=port, state_dir=state_dir,
                                groups=groups, topic_prefix=topic_prefix, username=username, password=password,
                                settings=settings)
        self.app = App(self.cfg, with_sensors=with_sensors)
        self._service: MessagingService | None = None  # opened on first use: see `service`
        self._open_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._status_cond = threading.Condition()

    @property
    def service(self) -> MessagingService:
        """The messaging service. The first use opens the agent's state (outbox, history), so sending and
        the history work before :meth:`start`; the constructor itself touches no file."""
        if self._service is not None:  # every send() comes here: no lock once open
            return self._service
        with self._open_lock:
            if self._service is None:
                self.app.open()
                svc = self.app.service("messaging")
                if not isinstance(svc, MessagingService):  # build_config enables messaging: cannot happen
                    self.app.stop()
                    raise MessagingError("the agent was built without its messaging service")
                svc.add_listener("status", self._status_changed)
                self._service = svc
            return self._service

    # ------------------------------------------------------------------ lifecycle
    @property
    def device_id(self) -> str:
        return self.cfg.device.id

    def start(self) -> Agent:
        """Open the outbox and history, connect in the background (the broker may be down: sends are
        queued durably meanwhile). Returns self."""
        if self._stopped:
            raise MessagingError("this Agent was stopped; create a new one")
        if not self._started:
            self._started = True
            _ = self.service  # opened first: the status listener is in place before anything arrives
            self.app.start()
        return self

    def stop(self) -> None:
        """Send what the outbox holds (up to ``agent.stop_timeout``), disconnect, close the databases."""
        if self._stopped:
            return
        self._stopped = True
        self.app.stop()  # a never-started app just closes what open() opened
        if self._service is not None:
            self._service.close()

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_online(self, timeout: float = 10.0) -> bool:
        return self.app.wait_online(timeout)

    @property
    def connection_status(self) -> ConnectionStatus:
        return self.app.connection_status()

    # ------------------------------------------------------------------ sending
    def send(self, to: str, data: Any, *, ttl: float | None = None) -> Message:
        """Send ``data`` (anything msgpack can encode, up to 1 MiB) to the device/app ``to``."""
        return self.service.send(to, data, ttl=ttl)

    def send_group(self, group: str, data: Any, *, ttl: float | None = None) -> Message:
        """Send to every member of ``group`` (devices list their groups in ``device.groups``)."""
        return self.service.send_group(group, data, ttl=ttl)

    def publish(self, stream: str, data: Any, *, cls: str = "telemetry", ttl: float | None = None) -> Message:
        """Telemetry-style message on ``<prefix>/<device>/<stream>`` (no receipts: queued, then sent)."""
        return self.service.publish(stream, data, cls=cls, ttl=ttl)

    def send_file(self, to: str, path: str | os.PathLike[str], *, name: str | None = None,
                  ttl: float | None = None) -> Message:
        """Send a file in sha256-verified chunks; "delivered" once the recipient has verified it whole."""
        return self.service.send_file(to, path, name=name, ttl=ttl)

    def subscribe(self, topic_filter: str, *, share: str | None = None) -> str:
        """Also receive envelopes on ``topic_filter`` (on_message, kind "stream"); ``share`` makes it an
        MQTT 5 shared subscription so several copies of an app split the messages."""
        return self.service.subscribe(topic_filter, share=share)

    # ------------------------------------------------------------------ groups and presence (groups.py, presence.py)
    def join(self, group: str) -> bool:
        """Join ``group`` now: its messages, a retained membership; kept across restarts. False if already in."""
        return self.service.groups.join(group)

    def leave(self, group: str) -> bool:
        """Leave ``group``: no more of its messages, membership cleared. False if not a member."""
        return self.service.groups.leave(group)

    @property
    def groups(self) -> list[str]:
        """The groups joined now."""
        return self.service.groups.joined

    def members(self, group: str) -> list[str]:
        """The members of ``group`` by its retained membership topics (followed from the first call on)."""
        return self.service.groups.members(group)

    def undelivered(self, msg: Message | str) -> list[str]:
        """The members of group message ``msg``'s group when it was sent without a delivered/read receipt."""
        m = self.message(msg.id if isinstance(msg, Message) else msg)
        if m is None:
            raise MessagingError(f"no message {msg!r} in the history")
        return self.service.groups.undelivered(m)

    def presence(self, peer: str) -> Presence:
        """``peer``'s presence now (``online`` None: unknown); follows it from now on."""
        self.watch_presence(peer)
        return self.service.presence.get(peer)

    def watch_presence(self, peer: str) -> None:
        """Follow ``peer``'s presence (peers messaged and group members are followed anyway)."""
        self.service.presence.watch(check_id(peer, "peer"))

    # ------------------------------------------------------------------ callbacks
    def on_presence(self, fn: F) -> F:
        """Decorator: ``fn(peer, presence)`` when a followed peer goes online, offline or unknown."""
        self.service.add_listener("presence", lambda arg: fn(*arg))
        return fn

    def on_message(self, fn: F) -> F:
        """Decorator: ``fn(msg)`` for every message received (once each, in arrival order)."""
        self.service.add_listener("message", fn)
        return fn

    def on_message_status(self, fn: F) -> F:
        """Decorator: ``fn(msg)`` whenever one of our messages changes status (or gets a group receipt)."""
        self.service.add_listener("status", fn)
        return fn

    def on_connection_status(self, fn: F) -> F:
        """Decorator: ``fn(status)`` with ConnectionStatus(state, reason): connecting, online, offline,
        auth_failed, stopped."""
        self.service.add_listener("connection", fn)
        return fn

    def add_listener(self, listener: object) -> None:
        """Register an object's ``on_message``/``on_message_status``/``on_connection_status`` methods."""
        found = False
        for attr, kind in (("on_message", "message"), ("on_message_status", "status"),
                           ("on_connection_status", "connection")):
            fn = getattr(listener, attr, None)
            if callable(fn):
                self.service.add_listener(kind, fn)
                found = True
        if not found:
            raise MessagingError(f"{listener!r} has none of on_message, on_message_status, on_connection_status")

    def _status_changed(self, msg: Message) -> None:
        with self._status_cond:
            self._status_cond.notify_all()

    def wait_status(self, msg: Message | str, *statuses: str, timeout: float = 10.0) -> Message:
        """Block until message ``msg`` has one of ``statuses`` (or a later one on the normal path);
        return it. Raises TimeoutError with the last status seen."""
        mid = msg.id if isinstance(msg, Message) else msg
        order = ("pending", "queued", "sent", "delivered", "read")
        want = set(statuses)
        deadline = time.monotonic() + timeout
        last: Message | None = None
        while True:
            last = self.service.history.get(mid)
            if last is not None and (last.status in want or any(
                    s in order and last.status in order and order.index(last.status) >= order.index(s)
                    for s in want)):
                return last
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"message {mid}: still {last.status if last else 'unknown'} after {timeout} s "
                                   f"(waiting for {', '.join(statuses)})")
            with self._status_cond:
                self._status_cond.wait(min(left, 0.5))

    # ------------------------------------------------------------------ history
    def history(self, *, peer: str | None = None, group: str | None = None, stream: str | None = None,
                sender: str | None = None, since: Any = None, until: Any = None, search: str | None = None,
                unread: bool | None = None, kind: str | None = None, limit: int | None = None,
                newest_first: bool = False) -> Iterator[Message]:
        """Messages sent and received, filtered (all filters combine); ``search`` is full-text (words,
        ``word*`` for a prefix); ``since``/``until`` take epoch seconds, datetimes, ISO text or '2h';
        ``kind`` is msg, file or stream."""
        return self.service.history.query(peer=peer, group=group, stream=stream, sender=sender, since=since,
                                          until=until, search=search, unread=unread, kind=kind, limit=limit,
                                          newest_first=newest_first)

    def summary(self) -> list[ConvSummary]:
        """Last message of each conversation (peer, group, stream), newest first, with unread counts."""
        return self.service.history.summary()

    def message(self, mid: str) -> Message | None:
        """The current state of a message (with per-recipient receipts)."""
        return self.service.history.get(mid)

    def unread_count(self) -> int:
        return self.service.history.unread_count()

    def mark_read(self, messages: Iterable[Message | str] | Message | str | None = None, *,
                  peer: str | None = None, group: str | None = None) -> int:
        """Mark received messages read (by message/id, or a whole peer/group conversation) and send read
        receipts to their senders. Returns how many changed."""
        ids: list[str] | None = None
        if messages is not None:
            items = [messages] if isinstance(messages, Message | str) else list(messages)
            ids = [m.id if isinstance(m, Message) else m for m in items]
        return self.service.mark_read(ids, peer=peer, group=group)


class AsyncAgent:
    """asyncio face of :class:`Agent`: ``async with``, ``async for msg in agent.messages()``,
    ``await agent.wait_status(...)``. Sending stays synchronous: it only writes to the local outbox."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.agent = Agent(*args, **kwargs)
        self._queue: asyncio.Queue[Message] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncAgent:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        loop, q = self._loop, self._queue
        self.agent.on_message(lambda m: loop.call_soon_threadsafe(q.put_nowait, m))
        await asyncio.to_thread(self.agent.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.agent.stop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agent, name)

    async def messages(self) -> AsyncIterator[Message]:
        if self._queue is None:
            raise MessagingError("use 'async with AsyncAgent(...)' before iterating messages()")
        while True:
            yield await self._queue.get()

    async def wait_status(self, msg: Message | str, *statuses: str, timeout: float = 10.0) -> Message:
        return await asyncio.to_thread(self.agent.wait_status, msg, *statuses, timeout=timeout)
