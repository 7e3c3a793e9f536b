"""msgpack envelopes (schema version 1) and safe decoding.

Envelope (a msgpack map)::

    {"v": 1, "dev": "dev-1", "seq": 42, "ts": 1764316800.25, "stream": "telemetry/s1",
     "data": {"value": 21.5}, ...optional keys: "cls", "id", "to", "group", "ttl", "sig"}

``seq`` is strictly increasing per device and never reused. Decoding always uses explicit limits,
refuses ext types and non-string map keys, so a hostile payload cannot become a huge object.
"""

from __future__ import annotations

from typing import Any

import msgpack

from edge_agent.errors import DecodeError

ENVELOPE_VERSION = 1

_packer = msgpack.Packer(use_bin_type=True)


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_envelope(dev: str, seq: int, ts: float, stream: str, data: Any, **extra: Any) -> bytes:
    """The envelope as bytes. A callable ``sig`` in ``extra`` (a :class:`edge_agent.messaging.authn.Seal`)
    is called with the finished envelope and its return value (the signature) stored as ``sig``."""
    env = {"v": ENVELOPE_VERSION, "dev": dev, "seq": seq, "ts": ts, "stream": stream, "data": data}
    seal = extra.pop("sig", None) if extra else None
    if extra:
        env.update({k: v for k, v in extra.items() if v is not None})
    if seal is not None:
        env["sig"] = seal(env) if callable(seal) else seal
    return encode(env)


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} refused")


def decode(payload: bytes, *, max_bytes: int = 1024 * 1024, max_str: int = 64 * 1024,
           max_bin: int = 1024 * 1024, max_array: int = 10000, max_map: int = 1000) -> Any:
    """Decode untrusted msgpack with explicit limits; raise DecodeError on anything else."""
    if len(payload) > max_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_no_ext,
                               max_str_len=max_str, max_bin_len=max_bin, max_array_len=max_array,
                               max_map_len=max_map, max_ext_len=0)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            RecursionError) as e:
        raise DecodeError(f"bad msgpack: {type(e).__name__}: {e}") from None


def decode_envelope(payload: bytes) -> dict[str, Any]:
    obj = decode(payload)
    if not isinstance(obj, dict) or "v" not in obj or "seq" not in obj:
        raise DecodeError("not an edge-agent envelope (map with v, dev, seq, ts, stream, data)")
    return obj
