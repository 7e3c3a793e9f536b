"""Authentic senders: every envelope the messaging service sends is Ed25519-signed by the device's key,
and direct, group, receipt and file-chunk envelopes are verified against the fleet roster.

Canonical bytes (what the signature covers)::

    msgpack(["edge-agent-msg/1", topic, envelope without "sig"])

with every map's keys sorted (recursively), ints as the smallest msgpack int, floats as float64, strings
UTF-8 and bytes as bin. The envelope holds the sender (``dev``), its ``seq`` (the message id is
``"<dev>:<seq>"``), ``ts``, ``stream``, the recipient (``to``) or ``group``, ``ttl`` and the data; the
topic it was published to is added, so a signed message cannot be re-addressed to another device or
group, and a copy with another seq, sender or time does not verify. An exact copy (same bytes, same
topic) verifies but carries the same id: the history's unique id drops it; so that the id is still
remembered, a message older than ``messaging.history_max_age`` is refused as well.

The signature is ``sig`` (64 bytes) in the envelope. The outbox builds the envelope (it assigns the seq),
so the service hands it a :class:`Seal` as ``extra["sig"]``: :func:`edge_agent.codec.encode_envelope`
calls it with the finished envelope and stores the signature in its place.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
from nacl.signing import SigningKey

from edge_agent.commands.signing import Signer, sorted_maps
from edge_agent.config.schema import MessagingConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.fsutil import atomic_write
from edge_agent.messaging import sodium
from edge_agent.messaging.sodium import Sign
from edge_agent.roster import RosterBook

log = logging.getLogger("edge_agent.messaging")

DOMAIN = "edge-agent-msg/1"
SIG = "sig"
KEY_FILE = "device.key"
ROSTER_FILE = "roster.json"
MODES = ("auto", "required", "off")
MINE_KEPT = 4096  # signatures of recently sent envelopes, to tell a refusal of ours from one of a forgery


class DeviceKeyError(EdgeAgentError, ValueError):
    """The device key file cannot be read or made."""


def canonical(topic: str, env: dict[str, Any]) -> bytes:
    """The bytes a message signature covers (see the module docstring)."""
    body = {k: v for k, v in env.items() if k != SIG}
    return msgpack.packb([DOMAIN, topic, _sorted(body)], use_bin_type=True, use_single_float=False)


def _sorted(obj: Any) -> Any:
    """:func:`edge_agent.commands.signing.sorted_maps`, the same result, faster when a map's keys are all
    strings (sorting by (type name, key) is then sorting by key)."""
    if isinstance(obj, dict):
        if all(type(k) is str for k in obj):
            return {k: _sorted(obj[k]) for k in sorted(obj)}
        return sorted_maps(obj)
    if isinstance(obj, list | tuple):
        return [_sorted(v) for v in obj]
    return obj


def load_or_create_key(path: Path) -> SigningKey:
    """The device's Ed25519 key: a base64 seed file (the format of ``edge-agent keys generate``), created
    with mode 0600 if missing. DeviceKeyError when it exists but is not a key, or is readable by others."""
    if not path.exists():
        key = SigningKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, base64.b64encode(bytes(key)).decode() + "\n")  # mkstemp: mode 0600
        log.info("new device key %s (public %s)", path, public_b64(key))
        return key
    try:
        loose = os.stat(path).st_mode & 0o077
        key = Signer.load(path).key
    except (OSError, ValueError) as e:
        raise DeviceKeyError(f"device key {path}: {e}") from None
    if loose:
        raise DeviceKeyError(f"device key {path} is readable by group/others: chmod 600 it")
    return key


def public_b64(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def message_id(env: dict[str, Any]) -> str:
    """The id of the message ``env`` belongs to: a file chunk's transfer id, else ``"<dev>:<seq>"``."""
    d = env.get("data")
    tid = d.get("transfer") if env.get("stream") == "file" and isinstance(d, dict) else None
    return tid if isinstance(tid, str) and tid.startswith(f"{env['dev']}:") else f"{env['dev']}:{env['seq']}"


class Seal:
    """``Seal(key, topic)(envelope) -> signature``: handed to the outbox as ``extra["sig"]``;
    ``record(mid, sig)`` is told of each signature made."""

    __slots__ = ("_record", "_sign", "topic")

    def __init__(self, key: SigningKey, topic: str, record: Callable[[str, bytes], None] | None = None, *,
                 sign: Sign | None = None) -> None:
        self._sign: Sign = sign or (lambda m: key.sign(m).signature)
        self._record = record
        self.topic = topic

    def __call__(self, env: dict[str, Any]) -> bytes:
        sig = self._sign(canonical(self.topic, env))
        if self._record is not None:
            self._record(message_id(env), sig)
        return sig


def verify(topic: str, env: dict[str, Any], public_key: bytes) -> bool:
    """Whether ``env`` (as received on ``topic``) carries a valid signature by ``public_key``."""
    sig = env.get(SIG)
    if not isinstance(sig, bytes) or len(sig) != 64:
        return False
    return sodium.verify(public_key, canonical(topic, env), sig)


class Authenticator:
    """Signs what this device sends and checks who sent what arrives (one per messaging service).

    ``mode`` (``messaging.signatures``): ``off`` signs and checks nothing (today's open fleet);
    ``auto`` signs, and checks once a verified roster is held; ``required`` signs and refuses everything
    that is not signed by the key the roster lists for its sender (no roster: nothing is accepted).
    """

    def __init__(self, key: SigningKey | None, book: RosterBook | None, *, mode: str, max_age: float) -> None:
        self._key = key
        self._sign = sodium.signer(key) if key is not None else None
        self.book = book
        self.mode = mode
        self._max_age = max_age
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._answers: dict[str, list[float]] = {}
        self._mine: OrderedDict[bytes, str] = OrderedDict()

    @property
    def public_key(self) -> str | None:
        return public_b64(self._key) if self._key is not None else None

    def extra(self, topic: str) -> dict[str, Any]:
        """What to add to an outgoing envelope's extra: the seal (nothing when signing is off)."""
        return {SIG: Seal(self._key, topic, self._remember, sign=self._sign)} if self._key is not None else {}

    def _remember(self, mid: str, sig: bytes) -> None:
        with self._lock:
            self._mine[sig] = mid
            if len(self._mine) > MINE_KEPT:
                self._mine.popitem(last=False)

    def signed(self, sig: Any) -> str | None:
        """The id of our recently sent message that carries signature ``sig`` (None: not one of ours, or
        too long ago): a ``failed`` answer to a refused envelope applies only to the message it refused."""
        if not isinstance(sig, bytes):
            return None
        with self._lock:
            return self._mine.get(sig)

    @property
    def enforcing(self) -> bool:
        return self.mode == "required" or (self.mode == "auto" and self.book is not None
                                           and self.book.current is not None)

    def check(self, topic: str, env: dict[str, Any]) -> str | None:
        """None when ``env`` may be believed to come from ``env["dev"]``, else why not (counted)."""
        if not self.enforcing:
            return None
        why = self._why(topic, env)
        if why is not None:
            with self._lock:
                self.refused[why.split(":")[0]] += 1
        return why

    def _why(self, topic: str, env: dict[str, Any]) -> str | None:
        key = self.book.key(env["dev"]) if self.book is not None else None
        if key is None:
            return "unknown sender: not in the fleet roster"
        if SIG not in env:
            return "unsigned"
        if not verify(topic, env, key):
            return "bad signature"
        if env["ts"] < time.time() - self._max_age:
            return "too old: older than messaging.history_max_age (a replay?)"
        return None

    def sign_doc(self, topic: str, doc: dict[str, Any]) -> str | None:
        """A base64 signature of a JSON document (e.g. a group membership) published on ``topic``, over the
        same canonical bytes as an envelope; None when signing is off."""
        if self._key is None:
            return None
        return base64.b64encode(self._key.sign(canonical(topic, doc)).signature).decode()

    def check_doc(self, topic: str, doc: dict[str, Any]) -> str | None:
        """None when the JSON document ``doc`` (its signer ``doc["dev"]``, base64 ``doc["sig"]``) may be
        believed, else why not. No age limit: a membership stays valid until it is cleared."""
        if not self.enforcing:
            return None
        key = self.book.key(doc["dev"]) if self.book is not None else None
        if key is None:
            return "unknown sender: not in the fleet roster"
        try:
            sig = base64.b64decode(doc.get(SIG) or "", validate=True)
        except (ValueError, TypeError):
            return "bad signature"
        return None if verify(topic, {**doc, SIG: sig}, key) else "bad signature"

    def may_answer(self, dev: str, per_minute: int = 10) -> bool:
        """Whether a ``failed`` receipt may go to ``dev`` now (rate-limited, roster members only), so forged
        traffic cannot make this device flood a sender."""
        if self.book is None or self.book.key(dev) is None:
            return False
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._answers.get(dev, []) if now - t < 60.0]
            if len(recent) >= per_minute:
                self._answers[dev] = recent
                return False
            self._answers[dev] = [*recent, now]
            return True

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.refused)


def make_authenticator(cfg: MessagingConfig, keys: Sequence[Any], prefix: str, state_dir: Path) -> Authenticator:
    """The messaging service's authenticator: the device key (read, or made at the first start) and the
    roster (stored and pinned; only with operator ``keys`` to verify it)."""
    if cfg.signatures == "off":
        return Authenticator(None, None, mode="off", max_age=cfg.history_max_age)
    key = load_or_create_key(Path(cfg.key) if cfg.key else state_dir / KEY_FILE)
    book = RosterBook(keys, prefix, state_dir / ROSTER_FILE) if keys else None
    if book is not None:
        book.open(cfg.roster or None)
    return Authenticator(key, book, mode=cfg.signatures, max_age=cfg.history_max_age)
