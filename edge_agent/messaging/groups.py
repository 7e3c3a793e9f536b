"""Live groups: join and leave at run time, who is a member, and who has not yet received a message.

::

    join(g)   --> subscribe <prefix>/group/<g>/msg (the router gets the handler first)
              --> retained <prefix>/group/<g>/members/<me>  {"dev", "joined", "sig"?}  (through the outbox)
    leave(g)  --> unsubscribe (the router drops the handler) --> retained empty payload on the same topic
    members   <-- <prefix>/group/<g>/members/+ for each joined group and each group sent to
    undelivered(mid) = members when it was sent - the sender - those whose delivered/read receipt arrived

The configured ``device.groups`` are joined at every start; groups joined at run time are kept in
``<state dir>/groups.json`` so a restart subscribes them again before the persistent session delivers
what waited for them. The membership document is signed like an envelope (over
``msgpack(["edge-agent-msg/1", topic, {"dev", "joined"}])``, base64 in ``sig``) when signing is on, and
checked against the roster when it is enforced; a cleared membership (empty payload) cannot be signed:
only the broker's ACL (a device writes only its own ``members/<dev>`` topic) protects it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write
from edge_agent.host import Disposition, Handler, Host, InMessage
from edge_agent.messaging.authn import Authenticator
from edge_agent.messaging.envelope import MessagingError, check_id
from edge_agent.messaging.history import Message
from edge_agent.transport.topics import group_members_filter, group_members_topic, group_msg_topic

log = logging.getLogger("edge_agent.messaging")

GROUPS_FILE = "groups.json"
SNAPSHOTS_KEPT = 4096  # member lists of recent group messages, for undelivered()


class Groups:
    """The group membership of one messaging service (see the module docstring)."""

    def __init__(self, host: Host, auth: Authenticator, *, dev: str, prefix: str, configured: list[str],
                 handler: Callable[[str], Handler], on_member: Callable[[str], None]) -> None:
        self._host = host
        self._auth = auth
        self._dev = dev
        self._prefix = prefix
        self._configured = list(configured)
        self._handler = handler  # group name -> the inbound handler of its messages
        self._on_member = on_member  # a member appeared (its presence is watched)
        self._lock = threading.RLock()
        self._joined: list[str] = list(dict.fromkeys(configured))
        self._watched: set[str] = set()
        self._members: dict[str, dict[str, float]] = {}  # group -> member -> joined ts
        self._left: dict[str, dict[str, tuple[float, float]]] = {}  # group -> member -> (joined, left)
        self._snaps: OrderedDict[str, list[str]] = OrderedDict()
        self._started = False

    @property
    def _file(self) -> Path:
        return self._host.state_dir / GROUPS_FILE

    def open(self) -> None:
        """Read the groups joined at run time before the last stop."""
        try:
            doc = json.loads(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s): only device.groups are joined", self._file, e)
            return
        extra = doc.get("joined") if isinstance(doc, dict) else None
        for g in extra if isinstance(extra, list) else []:
            if isinstance(g, str) and g not in self._joined:
                try:
                    self._joined.append(check_id(g, "group"))
                except MessagingError as e:
                    log.warning("%s: %s; skipped", self._file, e)

    def start(self) -> None:
        """Subscribe each joined group's messages and members, announce this device's membership."""
        with self._lock:
            self._started = True
            for g in sorted(self._watched):  # sent to or asked about before start
                self._subscribe_members(g)
            for g in self._joined:
                self._enter(g)

    @property
    def joined(self) -> list[str]:
        with self._lock:
            return list(self._joined)

    def join(self, group: str) -> bool:
        """Join ``group`` now (and at every later start); False if already a member."""
        check_id(group, "group")
        with self._lock:
            if group in self._joined:
                return False
            self._joined.append(group)
            self._save()
            if self._started:
                self._enter(group)
            return True

    def leave(self, group: str) -> bool:
        """Leave ``group``: no more of its messages, membership cleared; False if not a member. A group of
        ``device.groups`` is joined again at the next start."""
        check_id(group, "group")
        with self._lock:
            if group not in self._joined:
                return False
            self._joined.remove(group)
            self._save()
            self._host.unsubscribe(group_msg_topic(self._prefix, group))
            self._announce(group, None)
            return True

    def _enter(self, group: str) -> None:
        topic = group_msg_topic(self._prefix, group)
        self._host.subscribe(topic, lambda t: t == topic, self._handler(group), qos=1)
        self.watch(group)
        self._announce(group, round(time.time(), 3))

    def _save(self) -> None:
        extra = [g for g in self._joined if g not in self._configured]
        try:
            atomic_write(self._file, json.dumps({"joined": extra}) + "\n")
        except OSError as e:
            log.warning("cannot write %s (%s): groups joined at run time are forgotten at restart", self._file, e)

    def _announce(self, group: str, joined: float | None) -> None:
        topic = group_members_topic(self._prefix, group, self._dev)
        raw = b""
        if joined is not None:
            doc: dict[str, Any] = {"dev": self._dev, "joined": joined}
            sig = self._auth.sign_doc(topic, doc)
            raw = json.dumps({**doc, "sig": sig} if sig else doc, separators=(",", ":")).encode()
        self._host.publish_state(topic, raw)  # retained state, re-sent per connect; not in the seq stream

    # ------------------------------------------------------------------ members
    def watch(self, group: str) -> None:
        """Follow ``group``'s membership (its retained member topics); idempotent."""
        with self._lock:
            if group in self._watched:
                return
            self._watched.add(group)
            self._members.setdefault(group, {})
            if self._started:  # else start() subscribes it
                self._subscribe_members(group)

    def _subscribe_members(self, group: str) -> None:
        flt = group_members_filter(self._prefix, group)
        self._host.subscribe(flt, lambda t, g=group: self._is_member_topic(g, t), self._on_member_msg, qos=1)

    def _is_member_topic(self, group: str, topic: str) -> bool:
        head = group_members_topic(self._prefix, group, "")
        return topic.startswith(head) and "/" not in topic[len(head):]

    def members(self, group: str) -> list[str]:
        """The members known now (this device included when it has joined), sorted."""
        check_id(group, "group")
        self.watch(group)
        with self._lock:
            return sorted(self._members.get(group, {}))

    def _on_member_msg(self, msg: InMessage) -> Disposition:
        parts = msg.topic.split("/")
        group, dev = parts[-3], parts[-1]
        doc = self._parse(msg, dev)
        if doc is False:
            return Disposition.ACK
        now = time.time()
        with self._lock:
            table = self._members.setdefault(group, {})
            if doc is None:
                joined = table.pop(dev, None)
                if joined is not None:
                    self._left.setdefault(group, {})[dev] = (joined, now)
                return Disposition.ACK
            table[dev] = doc["joined"]
            self._left.get(group, {}).pop(dev, None)
        self._on_member(dev)
        return Disposition.ACK

    def _parse(self, msg: InMessage, dev: str) -> dict[str, Any] | bool | None:
        """The membership document, None for a cleared one, False (logged) for one that is refused."""
        if not msg.payload:
            return None
        try:
            doc = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if (not isinstance(doc, dict) or doc.get("dev") != dev or not isinstance(doc.get("joined"), int | float)
                or isinstance(doc.get("joined"), bool)):
            log.warning("membership on %s refused: not a membership document of %s", msg.topic, dev)
            return False
        why = self._auth.check_doc(msg.topic, doc)
        if why is not None:
            log.warning("membership on %s refused: %s", msg.topic, why)
            return False
        return doc

    # ------------------------------------------------------------------ undelivered
    def sent(self, mid: str, group: str) -> None:
        """A group message was put: remember who the members were (if known; else watch the group)."""
        with self._lock:
            known = group in self._watched
            self.watch(group)
            if known:
                self._snaps[mid] = sorted(self._members.get(group, {}))
                while len(self._snaps) > SNAPSHOTS_KEPT:
                    self._snaps.popitem(last=False)

    def undelivered(self, m: Message) -> list[str]:
        """Members of ``m.group`` when ``m`` was sent that have not returned a delivered/read receipt. Without
        a list taken at send time (the group was not watched yet, or a restart since), the members are
        those whose membership started before the message and had not ended by then."""
        if not m.outgoing or m.group is None:
            raise MessagingError(f"message {m.id} is not a group message this device sent")
        with self._lock:
            snap = self._snaps.get(m.id)
            if snap is None:
                self.watch(m.group)
                snap = [d for d, j in self._members.get(m.group, {}).items() if j <= m.ts]
                snap += [d for d, (j, left) in self._left.get(m.group, {}).items() if j <= m.ts < left]
        return sorted(set(snap) - {self._dev} - set(m.receipts))
