"""Ed25519 signatures through libsodium without letting go of the GIL.

PyNaCl calls libsodium through cffi, which releases the GIL around every call. For a 20 µs signature in a
process whose other threads (the network, the outbox, the history writer) want the GIL, taking it back
costs more than the call itself: ``py-spy`` showed ``send()`` spending about a quarter of its time in
``crypto_sign`` (bench/latency.py --send-throughput), mostly waiting for the GIL. ``ctypes.PyDLL`` calls
keep the GIL, so these calls cost what the computation costs.

The libsodium used is the one PyNaCl ships (its extension module exports the ``crypto_sign_*`` symbols).
If they are missing, or the self-check against PyNaCl disagrees, PyNaCl itself is used: the bytes are
the same either way (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

log = logging.getLogger("edge_agent.messaging")

Sign = Callable[[bytes], bytes]
_SIG = 64


def _lib() -> ctypes.PyDLL | None:
    try:
        import nacl._sodium as ext  # the compiled extension: libsodium linked in

        lib = ctypes.PyDLL(ext.__file__)
        lib.crypto_sign_detached.argtypes = (ctypes.c_char_p, ctypes.c_void_p, ctypes.c_char_p,
                                             ctypes.c_ulonglong, ctypes.c_char_p)
        lib.crypto_sign_detached.restype = ctypes.c_int
        lib.crypto_sign_verify_detached.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong,
                                                    ctypes.c_char_p)
        lib.crypto_sign_verify_detached.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError) as e:
        log.debug("libsodium through ctypes unavailable (%s); PyNaCl signs", e)
        return None
    return lib


_LIB = _lib()


def signer(key: SigningKey) -> Sign:
    """``sign(message) -> 64-byte signature`` by ``key``."""
    slow: Sign = lambda m: key.sign(m).signature  # noqa: E731
    if _LIB is None:
        return slow
    sk = bytes(key) + bytes(key.verify_key)  # libsodium's secret key: seed, then public key
    fn = _LIB.crypto_sign_detached

    def fast(m: bytes) -> bytes:
        out = ctypes.create_string_buffer(_SIG)
        if fn(out, None, m, len(m), sk) != 0:
            return slow(m)
        return out.raw

    probe = b"edge-agent sodium self-check"
    return fast if fast(probe) == slow(probe) else slow


def verify(public_key: bytes, message: bytes, sig: bytes) -> bool:
    """Whether ``sig`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(sig) != _SIG or len(public_key) != 32:
        return False
    if _LIB is not None and _VERIFY_OK:
        return _LIB.crypto_sign_verify_detached(sig, message, len(message), public_key) == 0
    try:
        VerifyKey(public_key).verify(message, sig)
    except BadSignatureError:
        return False
    return True


def _verify_self_check() -> bool:
    if _LIB is None:
        return False
    k = SigningKey(bytes(range(32)))
    m = b"edge-agent sodium self-check"
    s = k.sign(m).signature
    pk = bytes(k.verify_key)
    bad = bytes([s[0] ^ 1]) + s[1:]
    return (_LIB.crypto_sign_verify_detached(s, m, len(m), pk) == 0
            and _LIB.crypto_sign_verify_detached(bad, m, len(m), pk) != 0)


_VERIFY_OK = _verify_self_check()
