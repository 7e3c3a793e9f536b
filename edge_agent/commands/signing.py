"""Ed25519 command signatures (PyNaCl).

The signature covers canonical bytes built from the **topic's** target (kind and name), not from
anything the payload claims, so a command signed for device A and re-published on device B's topic
(or on a group topic) fails verification::

    msgpack(["edge-agent-cmd/1", kind, target, id, name, args, issued_at, expires_at])

with every map's keys sorted (recursively), ints and floats kept as they are (floats as float64),
strings UTF-8 and bytes as bin. JSON and msgpack requests therefore sign the same way as long as the
values survive the round trip (JSON has no bytes: JSON callers send base64 text instead).

Key ids are the first 16 hex digits of sha256(public key), so the payload never names an operator
that the verifier would have to trust.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from edge_agent.errors import CommandError

DOMAIN = "edge-agent-cmd/1"


def sorted_maps(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: sorted_maps(obj[k]) for k in sorted(obj, key=lambda k: (type(k).__name__, k))}
    if isinstance(obj, list | tuple):
        return [sorted_maps(v) for v in obj]
    return obj


def canonical(kind: str, target: str, cmd_id: str, name: str, args: Any, issued_at: float | None,
              expires_at: float | None) -> bytes:
    body = [DOMAIN, kind, target, cmd_id, name, sorted_maps(args if args is not None else {}),
            issued_at, expires_at]
    return msgpack.packb(body, use_bin_type=True, use_single_float=False)


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def decode_public_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return raw


class Verifier:
    """Trusted operator keys by key id."""

    def __init__(self, keys: list[tuple[str, str, list[str]]]) -> None:
        """``keys``: (operator name, base64 public key, allowed command patterns)."""
        self._keys: dict[str, tuple[str, VerifyKey, list[str]]] = {}
        for name, pub, allow in keys:
            raw = decode_public_key(pub)
            self._keys[key_id(raw)] = (name, VerifyKey(raw), list(allow))

    def operator(self, kid: str) -> tuple[str, list[str]] | None:
        entry = self._keys.get(kid)
        return (entry[0], entry[2]) if entry else None

    def verify(self, kid: str, message: bytes, signature: bytes) -> str:
        """Return the operator name; raise CommandError(unknown_key | bad_signature)."""
        entry = self._keys.get(kid)
        if entry is None:
            raise CommandError("unknown_key", f"key id {kid!r} is not a trusted operator key")
        if len(signature) != 64:
            raise CommandError("bad_signature", f"an Ed25519 signature has 64 bytes, got {len(signature)}")
        try:
            entry[1].verify(message, signature)
        except BadSignatureError:
            raise CommandError("bad_signature", "signature does not verify for this command") from None
        return entry[0]


def allowed(patterns: list[str], name: str) -> bool:
    """'*' allows all; 'config.*' allows every name starting with 'config.'; else an exact name."""
    return any(p == "*" or p == name or (p.endswith(".*") and name.startswith(p[:-1])) for p in patterns)


# ---------------------------------------------------------------- operator side

class Signer:
    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.public = bytes(key.verify_key)
        self.kid = key_id(self.public)

    @classmethod
    def generate(cls) -> Signer:
        return cls(SigningKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> Signer:
        text = Path(path).read_text().strip()
        try:
            seed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{path}: not a base64 Ed25519 private key") from None
        if len(seed) != 32:
            raise ValueError(f"{path}: an Ed25519 private key has 32 bytes, got {len(seed)}")
        return cls(SigningKey(seed))

    def private_b64(self) -> str:
        return base64.b64encode(bytes(self.key)).decode()

    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    def sign(self, kind: str, target: str, name: str, args: dict[str, Any] | None = None, *,
             cmd_id: str | None = None, ttl: float = 60.0, now: float | None = None) -> dict[str, Any]:
        """A ready-to-encode request map (``sig`` as bytes; base64 it for JSON)."""
        now = time.time() if now is None else now
        cmd_id = cmd_id or uuid.uuid4().hex
        args = args or {}
        issued, expires = round(now, 3), round(now + ttl, 3)
        msg = canonical(kind, target, cmd_id, name, args, issued, expires)
        sig = self.key.sign(msg).signature
        return {"id": cmd_id, "name": name, "args": args, "issued_at": issued, "expires_at": expires,
                "kid": self.kid, "sig": sig}
