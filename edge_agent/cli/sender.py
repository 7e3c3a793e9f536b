"""The MQTT side of ``edge-agent ctl send``: one command out, every device's reply collected.

:class:`Sender` publishes a (signed) command with an MQTT 5 Response Topic (a private
``<prefix>/_ctl/<client id>/reply``) and Correlation Data (the command id), and learns who should answer
from the retained ``<prefix>/+/status`` messages (which carry ``groups``).

Replies are bound to their sender: an agent answers on ``<reply topic>/<its device id>``, a topic the
broker's ACL (``pattern write <prefix>/_ctl/+/reply/%u``) lets only that device write. A reply whose
body names another device than its topic, or that carries another command's id or correlation data, is
not taken: it is counted in :attr:`Sender.forged` (a compromised device answering for another one, or
for a device that does not exist). Usable from tests and scripts
as well as the CLI. The MQTT client is :class:`edge_agent.transport.mqtt.MqttTransport` (the only paho user).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import codec
from edge_agent.commands.signing import Signer
from edge_agent.config import Config
from edge_agent.fsutil import atomic_write


def members_cache_path() -> Path:
    if os.environ.get("EDGE_AGENT_CTL_CACHE"):
        return Path(os.environ["EDGE_AGENT_CTL_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("edge-agent", appauthor=False)) / "members.json"



@dataclass
class Row:
    device: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"device": self.device, "status": self.status, "latency_ms": self.latency_ms}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["result"] = self.result
        return d



class Sender:
    """One command, many replies. Usable from tests and scripts as well as the CLI."""

    def __init__(self, cfg: Config, signer: Signer | None, *, client_id: str | None = None) -> None:
        from edge_agent.transport.mqtt import MqttTransport

        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.signer = signer
        self.client_id = client_id or f"edge-ctl-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.reply_topic = f"{self.prefix}/_ctl/{self.client_id}/reply"
        self.statuses: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.first: dict[str, float] = {}
        self.forged: list[str] = []  # why each reply that was not taken was refused
        self._cond = threading.Condition()
        self._sent_at = 0.0
        self._cid = b""
        self.on_progress: Callable[[str, dict[str, Any], float], None] = lambda d, r, ms: None
        self.transport = MqttTransport(cfg.mqtt, client_id=self.client_id, on_message=self._on_message,
                                       persistent_session=False)
        self.transport.subscribe(self.reply_topic + "/+", qos=1)
        self.transport.subscribe(f"{self.prefix}/+/status", qos=1)

    def _reply(self, m: Any) -> dict[str, Any] | None:
        """The reply on ``<reply topic>/<device>``, if it is bound to that device and to this command."""
        dev = m.topic[len(self.reply_topic) + 1:]
        if m.correlation_data is None or bytes(m.correlation_data) != self._cid:
            why = "another command's correlation data"
        else:
            try:
                rep = codec.decode(m.payload) if m.payload[:1] != b"{" else json.loads(m.payload)
            except Exception:
                rep = None
            if not isinstance(rep, dict) or not isinstance(rep.get("device"), str):
                why = "not a reply"
            elif rep["device"] != dev:
                why = f"body names device {str(rep['device'])[:64]!r}"
            elif rep.get("id") not in (None, self._cid.decode()):
                why = f"another command's id {str(rep.get('id'))[:64]!r}"
            else:
                return rep
        with self._cond:
            self.forged.append(f"reply on {m.topic}: {why}")
        return None

    def _on_message(self, m: Any) -> None:
        if m.topic.startswith(self.reply_topic + "/"):
            rep = self._reply(m)
            if rep is None:
                return
            dev = rep["device"]
            ms = (time.monotonic() - self._sent_at) * 1000
            with self._cond:
                prev = self.replies.get(dev)
                if prev is None or prev.get("status") == "accepted":
                    self.replies[dev] = {**rep, "_ms": ms}
                self._cond.notify_all()
            self.on_progress(dev, rep, ms)
        elif m.topic.endswith("/status"):
            try:
                st = json.loads(m.payload)
            except ValueError:
                return
            if isinstance(st, dict) and isinstance(st.get("dev"), str):
                with self._cond:
                    self.statuses[st["dev"]] = st

    def connect(self, timeout: float) -> bool:
        self.transport.start()
        if not self.transport.wait_online(timeout):
            return False
        time.sleep(0.5)  # retained status messages arrive right after the SUBACK
        return True

    def members(self, kind: str, target: str) -> list[str]:
        """Devices expected to answer. An offline agent's retained status (its will) carries no groups, so
        the groups last seen for it are remembered in a small cache (:func:`members_cache_path`)."""
        cache = self._load_cache()
        with self._cond:
            if kind == "device":
                return [target]
            if kind == "all":
                return sorted(self.statuses)
            out = []
            for dev, st in self.statuses.items():
                groups = st.get("groups")
                if groups is None:
                    groups = cache.get(dev, [])
                if target in groups:
                    out.append(dev)
            return sorted(out)

    def _cache_key(self) -> str:
        return f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}/{self.prefix}"

    def _load_cache(self) -> dict[str, list[str]]:
        try:
            data = json.loads(members_cache_path().read_text())
            entry = data.get(self._cache_key(), {})
            return {str(k): [str(g) for g in v] for k, v in entry.items() if isinstance(v, list)}
        except (OSError, ValueError, AttributeError):
            return {}

    def save_cache(self) -> None:
        """Remember the groups of every device whose status carried them; forget devices with no status."""
        path = members_cache_path()
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        old = self._load_cache()
        with self._cond:
            entry = {d: list(st["groups"]) if isinstance(st.get("groups"), list) else old.get(d, [])
                     for d, st in self.statuses.items()}
        data[self._cache_key()] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(data), fsync=False)  # a cache: a lost update is harmless
        except OSError:
            pass

    def send(self, kind: str, target: str, name: str, args: dict[str, Any], *, ttl: float = 60.0,
             cmd_id: str | None = None) -> str:
        if kind == "device":
            topic = f"{self.prefix}/{target}/cmd/{name}"
        elif kind == "group":
            topic = f"{self.prefix}/group/{target}/cmd/{name}"
        else:
            topic = f"{self.prefix}/all/cmd/{name}"
        if self.signer is not None:
            req = self.signer.sign(kind, "all" if kind == "all" else target, name, args, cmd_id=cmd_id, ttl=ttl)
        else:
            req = {"id": cmd_id or uuid.uuid4().hex, "name": name, "args": args}
        self._cid = req["id"].encode()
        self._sent_at = time.monotonic()
        self.transport.publish(topic, codec.encode(req), qos=1, props={
            "response_topic": self.reply_topic, "correlation_data": self._cid,
            "content_type": "application/msgpack"})
        return str(req["id"])

    def wait(self, expected: list[str], expected_n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                final = {d for d, r in self.replies.items() if r.get("status") != "accepted"}
                if (expected or expected_n) and set(expected) <= final and len(final) >= expected_n:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.2))

    def rows(self, expected: list[str]) -> list[Row]:
        rows: list[Row] = []
        with self._cond:
            for dev in sorted(set(expected) | set(self.replies)):
                r = self.replies.get(dev)
                if r is None:
                    st = self.statuses.get(dev, {})
                    why = f"device {st['state']}" if st.get("state") and st.get("state") != "online" else \
                        "no reply before the timeout"
                    rows.append(Row(dev, "no answer", why))
                    continue
                rows.append(Row(dev, str(r.get("status")), r.get("result"), r.get("error"), round(r["_ms"], 1)))
        return rows

    def close(self) -> None:
        self.transport.stop(timeout=2.0)

