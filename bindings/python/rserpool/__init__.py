"""Python bindings of the rserpool C API (Reliable Server Pooling, RFC 5351-5356).

Pure Python: :mod:`ctypes` over ``librserpool.so``, the shared library the
Rust crate builds. The library is looked up, in this order:

1. the ``RSERPOOL_LIB`` environment variable (the library file, or the
   directory holding ``librserpool.so``);
2. next to this package (``rserpool/librserpool.so``);
3. the repository's ``target/debug`` then ``target/release`` (when the
   package is used from a checkout);
4. the system loader (``LD_LIBRARY_PATH``, ``ldconfig``).

It is loaded on first use; its version and struct layout are checked then
(:class:`LibraryError` on a mismatch).

A pool element (server)::

    with rserpool.Context(rserpool.Config(registrars=["tcp://127.0.0.1:3863"])) as ctx:
        pe = ctx.register_pe("echo", port=7000, addresses=["127.0.0.1"])
        ...                      # serve; the library re-registers in the background
        pe.deregister()

A pool user (client)::

    with rserpool.Context(registrars=["tcp://127.0.0.1:3863"]) as ctx:
        server = ctx.get_primary_server("echo")
        try:
            sock = socket.create_connection(server.address, timeout=5)
        except OSError:
            server = ctx.get_next_server("echo", server.id)

Every call may be made from any thread; blocking calls release the GIL.
Failures raise :class:`RserpoolError` subclasses carrying the C result code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Type, Union

__all__ = [
    "Config",
    "Context",
    "PoolElement",
    "ServerInfo",
    "Session",
    "PeServer",
    "Notification",
    "SendReceipt",
    "decode",
    "version",
    "version_number",
    "load_library",
    "RserpoolError",
    "LibraryError",
    "InvalidArgument",
    "InvalidHandle",
    "ContextClosed",
    "InvalidState",
    "UnknownPE",
    "ProtocolError",
    "UnknownPool",
    "TransportError",
    "NoRegistrar",
    "Timeout",
    "ConnectionLost",
    "NoSctp",
    "OSFailure",
    "NoUsableElement",
    "WouldBlock",
    "SessionClosed",
    "WouldDeadlock",
    "MalformedMessage",
    "InternalError",
]

#: The C API version this module was written for (``RSERPOOL_VERSION_NUMBER``
#: of include/rserpool.h: major * 10000 + minor * 100 + patch).
API_VERSION = 100

PPID_ASAP = 11
PPID_ENRP = 12
#: The longest message a session sends (one DATA chunk of the TCP mapping).
MAX_MESSAGE_LEN = 65519

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class LibraryError(ImportError):
    """librserpool could not be found or does not match these bindings."""


class RserpoolError(Exception):
    """A failure reported by the library.

    ``code`` is the C result code (a negative ``RSERPOOL_ERR_*`` value),
    ``message`` its description (``rserpool_strerror``).
    """

    def __init__(self, code: int, message: Optional[str] = None) -> None:
        if message is None:
            message = _strerror(code)
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


class InvalidArgument(RserpoolError, ValueError):
    """An argument outside its documented range (codes -1 to -3)."""


class InvalidHandle(RserpoolError):
    """The object is closed, freed or was never valid (code -4)."""


class ContextClosed(InvalidHandle):
    """The :class:`Context` was closed (raised before calling the library)."""


class InvalidState(RserpoolError):
    """Not possible in the object's current state (code -5)."""


class UnknownPE(RserpoolError):
    """No such pool element in the context (code -6): never registered,
    deregistered, or given up by the library."""


class WouldDeadlock(InvalidState):
    """A waiting call from a session callback, on the library's thread
    (code -7)."""


class ProtocolError(RserpoolError):
    """The registrar answered with an error cause (codes -100 to -199)."""


class UnknownPool(ProtocolError):
    """No pool with this handle (code -109)."""


class TransportError(RserpoolError):
    """Transport or operating system failure (codes -200 to -299)."""


class NoRegistrar(TransportError):
    """No registrar could be reached (code -200)."""


class Timeout(TransportError):
    """A registrar did not answer in time (code -201)."""


class ConnectionLost(TransportError):
    """The connection was lost (code -202)."""


class NoSctp(TransportError):
    """The kernel or library has no SCTP support (code -203)."""


class OSFailure(TransportError):
    """An operating system call failed (code -204)."""


class NoUsableElement(TransportError):
    """Every pool element of the pool was reported unreachable (code -206)."""


class WouldBlock(TransportError):
    """Nothing to do without waiting (code -205): a session's send buffer is
    full, or nothing to accept."""


class SessionClosed(TransportError):
    """The session (or pool element server) is closed (code -207)."""


class MalformedMessage(RserpoolError, ValueError):
    """The input is not a well-formed message (code -300); ``offset`` is the
    byte offset of the problem when known."""

    def __init__(self, code: int, message: Optional[str] = None, offset: Optional[int] = None):
        super().__init__(code, message)
        self.offset = offset

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.message}{where} (code {self.code})"


class InternalError(RserpoolError):
    """A bug in the library (code -900)."""


_EXACT: Dict[int, Type[RserpoolError]] = {
    -1: InvalidArgument,
    -2: InvalidArgument,
    -3: InvalidArgument,
    -4: InvalidHandle,
    -5: InvalidState,
    -6: UnknownPE,
    -7: WouldDeadlock,
    -109: UnknownPool,
    -200: NoRegistrar,
    -201: Timeout,
    -202: ConnectionLost,
    -203: NoSctp,
    -204: OSFailure,
    -205: WouldBlock,
    -206: NoUsableElement,
    -207: SessionClosed,
    -300: MalformedMessage,
    -900: InternalError,
}


def _error_class(code: int) -> Type[RserpoolError]:
    cls = _EXACT.get(code)
    if cls is not None:
        return cls
    if -199 <= code <= -100:
        return ProtocolError
    if -299 <= code <= -200:
        return TransportError
    return RserpoolError


def _check(code: int) -> None:
    if code != 0:
        raise _error_class(code)(code)


# ---------------------------------------------------------------------------
# C structures (must match include/rserpool.h; checked at load time)
# ---------------------------------------------------------------------------

_MAX_ADDRS = 8
_ADDR_TEXT_LEN = 48
_c = ctypes


class _SockaddrStorage(_c.Structure):
    # glibc: sa_family_t, 118 bytes of padding, unsigned long (alignment 8).
    _fields_ = [
        ("ss_family", _c.c_ushort),
        ("_padding", _c.c_char * 118),
        ("_align", _c.c_ulong),
    ]


class _Policy(_c.Structure):
    _fields_ = [
        ("policy_type", _c.c_uint32),
        ("weight", _c.c_uint32),
        ("priority", _c.c_uint32),
        ("load", _c.c_uint32),
        ("degradation", _c.c_uint32),
    ]


class _PeParams(_c.Structure):
    _fields_ = [
        ("protocol", _c.c_uint32),
        ("port", _c.c_uint16),
        ("transport_use", _c.c_uint16),
        ("addrs", _c.POINTER(_c.c_char_p)),
        ("addr_count", _c.c_size_t),
        ("policy", _Policy),
        ("reg_life", _c.c_int32),
        ("pe_id", _c.c_uint32),
    ]


class _Addr(_c.Structure):
    _fields_ = [
        ("sa", _SockaddrStorage),
        ("sa_len", _c.c_uint32),
        ("text", _c.c_char * _ADDR_TEXT_LEN),
        ("reserved", _c.c_uint32),
    ]


class _ServerInfo(_c.Structure):
    _fields_ = [
        ("pe_id", _c.c_uint32),
        ("protocol", _c.c_uint32),
        ("port", _c.c_uint16),
        ("transport_use", _c.c_uint16),
        ("policy", _Policy),
        ("addr_count", _c.c_uint32),
        ("addr_total", _c.c_uint32),
        ("addrs", _Addr * _MAX_ADDRS),
    ]


# ---------------------------------------------------------------------------
# Loading the library
# ---------------------------------------------------------------------------

class _SessionParams(_c.Structure):
    _fields_ = [
        ("auto_failover", _c.c_uint32),
        ("upper_layer_acks", _c.c_uint32),
        ("ack_events", _c.c_uint32),
        ("nonblock", _c.c_uint32),
        ("open_timeout_ms", _c.c_uint32),
        ("connect_timeout_ms", _c.c_uint32),
        ("retry_interval_ms", _c.c_uint32),
        ("max_attempts", _c.c_uint32),
        ("max_buffered", _c.c_size_t),
        ("max_buffered_bytes", _c.c_size_t),
        ("failover_pool", _c.c_char_p),
        ("failover_pool_len", _c.c_size_t),
    ]


class _Dest(_c.Structure):
    _fields_ = [("kind", _c.c_uint32), ("pe_id", _c.c_uint32)]


class _Notification(_c.Structure):
    _fields_ = [
        ("kind", _c.c_uint32),
        ("ppid", _c.c_uint32),
        ("pe_id", _c.c_uint32),
        ("from_pe_id", _c.c_uint32),
        ("stream", _c.c_uint16),
        ("reserved", _c.c_uint16),
        ("error", _c.c_int32),
        ("seq", _c.c_uint64),
        ("len", _c.c_size_t),
        ("count", _c.c_size_t),
    ]


class _SessionStatus(_c.Structure):
    _fields_ = [
        ("state", _c.c_uint32),
        ("pe_id", _c.c_uint32),
        ("buffered", _c.c_size_t),
        ("sent", _c.c_uint64),
        ("resent", _c.c_uint64),
        ("acked", _c.c_uint64),
        ("failovers", _c.c_uint64),
        ("connect_attempts", _c.c_uint64),
        ("cookies", _c.c_uint64),
    ]


class _PeListenParams(_c.Structure):
    _fields_ = [
        ("pool_handle", _c.c_char_p),
        ("handle_len", _c.c_size_t),
        ("listen_url", _c.c_char_p),
        ("policy", _Policy),
        ("reg_life", _c.c_int32),
        ("pe_id", _c.c_uint32),
    ]


#: void (*)(rserpool_session *, uint32_t ppid, uint16_t stream, const uint8_t *, size_t, void *)
_DATA_CB = _c.CFUNCTYPE(
    None, _c.c_void_p, _c.c_uint32, _c.c_uint16, _c.POINTER(_c.c_uint8), _c.c_size_t, _c.c_void_p
)
#: void (*)(rserpool_session *, uint32_t from, uint32_t to, const uint64_t *, size_t, void *)
_FAILOVER_CB = _c.CFUNCTYPE(
    None, _c.c_void_p, _c.c_uint32, _c.c_uint32, _c.POINTER(_c.c_uint64), _c.c_size_t, _c.c_void_p
)

_LIB_NAME = "librserpool.so"
_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()

_u8p = _c.c_char_p  # uint8_t * buffers: bytes objects, length passed separately
_SIGNATURES: Dict[str, Tuple[Any, Sequence[Any]]] = {
    "rserpool_config_new": (_c.c_int, [_c.POINTER(_c.c_void_p)]),
    "rserpool_config_free": (_c.c_int, [_c.c_void_p]),
    "rserpool_config_add_registrar": (_c.c_int, [_c.c_void_p, _c.c_char_p]),
    "rserpool_config_set_announce": (_c.c_int, [_c.c_void_p, _c.c_char_p]),
    "rserpool_config_set_timer": (_c.c_int, [_c.c_void_p, _c.c_uint32, _c.c_uint32]),
    "rserpool_config_set_attempts": (_c.c_int, [_c.c_void_p, _c.c_uint32, _c.c_uint32]),
    "rserpool_config_set_reglife_unit": (_c.c_int, [_c.c_void_p, _c.c_uint32]),
    "rserpool_config_set_profile": (_c.c_int, [_c.c_void_p, _c.c_uint32]),
    "rserpool_context_new": (_c.c_int, [_c.c_void_p, _c.POINTER(_c.c_void_p)]),
    "rserpool_context_free": (_c.c_int, [_c.c_void_p]),
    "rserpool_pe_params_init": (_c.c_int, [_c.POINTER(_PeParams)]),
    "rserpool_register_pe": (
        _c.c_int,
        [_c.c_void_p, _u8p, _c.c_size_t, _c.POINTER(_PeParams), _c.POINTER(_c.c_uint32)],
    ),
    "rserpool_update_load": (_c.c_int, [_c.c_void_p, _c.c_uint32, _c.c_uint32]),
    "rserpool_update_policy": (_c.c_int, [_c.c_void_p, _c.c_uint32, _c.POINTER(_Policy)]),
    "rserpool_pe_status": (_c.c_int, [_c.c_void_p, _c.c_uint32, _c.POINTER(_c.c_uint32)]),
    "rserpool_deregister": (_c.c_int, [_c.c_void_p, _c.c_uint32]),
    "rserpool_get_primary_server": (
        _c.c_int,
        [_c.c_void_p, _u8p, _c.c_size_t, _c.POINTER(_ServerInfo)],
    ),
    "rserpool_get_next_server": (
        _c.c_int,
        [_c.c_void_p, _u8p, _c.c_size_t, _c.c_uint32, _c.POINTER(_ServerInfo)],
    ),
    "rserpool_report_failure": (_c.c_int, [_c.c_void_p, _u8p, _c.c_size_t, _c.c_uint32]),
    "rserpool_server_info_size": (_c.c_size_t, []),
    "rserpool_session_params_init": (_c.c_int, [_c.POINTER(_SessionParams)]),
    "rserpool_session_open": (
        _c.c_int,
        [_c.c_void_p, _u8p, _c.c_size_t, _c.POINTER(_SessionParams), _c.POINTER(_c.c_void_p)],
    ),
    "rserpool_session_open_addr": (
        _c.c_int,
        [_c.c_void_p, _c.c_char_p, _c.POINTER(_SessionParams), _c.POINTER(_c.c_void_p)],
    ),
    "rserpool_data_send": (
        _c.c_int,
        [
            _c.c_void_p,
            _c.POINTER(_Dest),
            _u8p,
            _c.c_size_t,
            _c.c_uint32,
            _c.c_uint32,
            _c.POINTER(_c.c_uint32),
            _c.POINTER(_c.c_uint64),
        ],
    ),
    "rserpool_recv": (
        _c.c_int,
        [_c.c_void_p, _c.POINTER(_Notification), _c.c_void_p, _c.c_size_t, _c.c_int],
    ),
    "rserpool_session_fd": (_c.c_int, [_c.c_void_p, _c.POINTER(_c.c_int)]),
    "rserpool_set_data_indication": (_c.c_int, [_c.c_void_p, _DATA_CB, _c.c_void_p]),
    "rserpool_set_failover_callback": (_c.c_int, [_c.c_void_p, _FAILOVER_CB, _c.c_void_p]),
    "rserpool_session_failover_now": (_c.c_int, [_c.c_void_p]),
    "rserpool_session_cookie": (
        _c.c_int,
        [_c.c_void_p, _c.c_void_p, _c.c_size_t, _c.POINTER(_c.c_size_t)],
    ),
    "rserpool_session_get_status": (_c.c_int, [_c.c_void_p, _c.POINTER(_SessionStatus)]),
    "rserpool_session_close": (_c.c_int, [_c.c_void_p]),
    "rserpool_send_cookie": (_c.c_int, [_c.c_void_p, _u8p, _c.c_size_t]),
    "rserpool_session_ack": (_c.c_int, [_c.c_void_p]),
    "rserpool_notification_size": (_c.c_size_t, []),
    "rserpool_session_params_size": (_c.c_size_t, []),
    "rserpool_pe_listen_params_init": (_c.c_int, [_c.POINTER(_PeListenParams)]),
    "rserpool_pe_listen": (
        _c.c_int,
        [_c.c_void_p, _c.POINTER(_PeListenParams), _c.POINTER(_c.c_void_p)],
    ),
    "rserpool_pe_server_pe_id": (_c.c_int, [_c.c_void_p, _c.POINTER(_c.c_uint32)]),
    "rserpool_pe_server_local_url": (
        _c.c_int,
        [_c.c_void_p, _c.c_char_p, _c.c_size_t, _c.POINTER(_c.c_size_t)],
    ),
    "rserpool_pe_server_fd": (_c.c_int, [_c.c_void_p, _c.POINTER(_c.c_int)]),
    "rserpool_pe_accept": (_c.c_int, [_c.c_void_p, _c.c_int, _c.POINTER(_c.c_void_p)]),
    "rserpool_pe_server_close": (_c.c_int, [_c.c_void_p]),
    "rserpool_decode_json": (
        _c.c_int,
        [
            _u8p,
            _c.c_size_t,
            _c.c_uint32,
            _c.c_char_p,
            _c.c_size_t,
            _c.POINTER(_c.c_size_t),
            _c.POINTER(_c.c_size_t),
        ],
    ),
    "rserpool_strerror": (_c.c_char_p, [_c.c_int]),
    "rserpool_version": (_c.c_char_p, []),
    "rserpool_version_number": (_c.c_uint32, []),
}


def _candidates() -> Iterable[str]:
    env = os.environ.get("RSERPOOL_LIB")
    if env:
        p = Path(env)
        yield str(p / _LIB_NAME if p.is_dir() else p)
        return  # an explicit choice: no fallback that could hide a mistake
    here = Path(__file__).resolve().parent
    yield str(here / _LIB_NAME)
    repo = here.parent.parent.parent  # bindings/python/rserpool -> repository
    for profile in ("debug", "release"):
        yield str(repo / "target" / profile / _LIB_NAME)
    found = ctypes.util.find_library("rserpool")
    yield found or _LIB_NAME


def _compatible(lib_version: int) -> bool:
    want_major, want_minor = divmod(API_VERSION // 100, 100)
    major, minor = divmod(lib_version // 100, 100)
    if major != want_major:
        return False
    if major == 0:  # 0.x: every minor release may break the API
        return minor == want_minor
    return minor >= want_minor


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Load (once) and return the shared library, checking that it matches.

    ``path`` overrides the search described in the module documentation. Raises
    :class:`LibraryError` when nothing loads or the library's version or
    ``rserpool_server_info`` size differs from what this module expects.
    """
    global _lib
    with _lib_lock:
        if _lib is not None and path is None:
            return _lib
        errors = []
        lib = None
        for cand in [path] if path else _candidates():
            if os.sep in cand and not os.path.exists(cand):
                errors.append(f"{cand}: no such file")
                continue
            try:
                lib = ctypes.CDLL(cand)
                break
            except OSError as e:
                errors.append(f"{cand}: {e}")
        if lib is None:
            raise LibraryError(
                "librserpool not found (build it with `cargo build` or set RSERPOOL_LIB); tried:\n  "
                + "\n  ".join(errors)
            )
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as e:
                raise LibraryError(f"{lib._name} lacks {name}: not a matching librserpool") from e
            fn.restype = restype
            fn.argtypes = list(argtypes)
        got = lib.rserpool_version_number()
        if not _compatible(got):
            raise LibraryError(
                f"{lib._name} is version {got} ({lib.rserpool_version().decode()}), "
                f"these bindings were written for API version {API_VERSION}"
            )
        for cname, fn, struct in (
            ("rserpool_server_info", lib.rserpool_server_info_size, _ServerInfo),
            ("rserpool_notification", lib.rserpool_notification_size, _Notification),
            ("rserpool_session_params", lib.rserpool_session_params_size, _SessionParams),
        ):
            size = fn()
            if size != ctypes.sizeof(struct):
                raise LibraryError(
                    f"{lib._name}: {cname} is {size} bytes, "
                    f"these bindings define {ctypes.sizeof(struct)}"
                )
        _lib = lib
        return lib


def _strerror(code: int) -> str:
    try:
        return load_library().rserpool_strerror(code).decode("utf-8", "replace")
    except LibraryError:
        return f"rserpool error {code}"


def version() -> str:
    """The library version, e.g. ``"0.1.0"``."""
    return load_library().rserpool_version().decode()


def version_number() -> int:
    """The library version as ``major * 10000 + minor * 100 + patch``."""
    return int(load_library().rserpool_version_number())


# ---------------------------------------------------------------------------
# Names for the C constants
# ---------------------------------------------------------------------------

_TRANSPORTS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33}
_TRANSPORT_NAMES = {v: k for k, v in _TRANSPORTS.items()}

_POLICIES = {
    "rr": 1,
    "round_robin": 1,
    "wrr": 2,
    "weighted_round_robin": 2,
    "random": 3,
    "rand": 3,
    "wrand": 4,
    "weighted_random": 4,
    "priority": 5,
    "prio": 5,
    "lu": 0x40000001,
    "least_used": 0x40000001,
    "lud": 0x40000002,
    "least_used_degradation": 0x40000002,
    "plu": 0x40000003,
    "priority_least_used": 0x40000003,
    "rlu": 0x40000004,
    "randomized_least_used": 0x40000004,
}
_POLICY_NAMES = {1: "rr", 2: "wrr", 3: "random", 4: "wrand", 5: "priority",
                 0x40000001: "lu", 0x40000002: "lud", 0x40000003: "plu", 0x40000004: "rlu"}

_TIMERS = {
    "t1": 1,
    "t1_request": 1,
    "t2": 2,
    "t2_registration": 2,
    "t3": 3,
    "t3_deregistration": 3,
    "t4": 4,
    "t4_reregistration": 4,
    "t5": 5,
    "t5_server_hunt": 5,
    "t7": 7,
    "t7_outdate": 7,
    "stale_cache": 8,
    "retran_max": 9,
    "unreachable_holdoff": 10,
    "shutdown": 11,
}

_PROFILES = {"rfc": 0, "rsplib": 1}
_UNITS = {"s": 0, "seconds": 0, "ms": 1, "milliseconds": 1}
_USES = {"data": 0, "data_only": 0, "control": 1, "data_plus_control": 1}
_STATUS = {1: "registering", 2: "registered", 3: "lost", 4: "deregistering"}

_LOAD_MAX = 0xFFFFFFFF


def _lookup(table: Mapping[str, int], value: Union[str, int], what: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return table[value.lower()]
    except (KeyError, AttributeError):
        raise InvalidArgument(-2, f"unknown {what} {value!r} (one of {', '.join(table)})") from None


def _load_raw(load: float) -> int:
    """A load as a fraction 0.0 (idle) .. 1.0 (full) to the wire's 32-bit scale."""
    if not 0.0 <= load <= 1.0:
        raise InvalidArgument(-2, f"load {load!r} is not between 0.0 and 1.0")
    return int(round(load * _LOAD_MAX))


def _pool_bytes(pool: Union[str, bytes]) -> bytes:
    if isinstance(pool, str):
        return pool.encode("utf-8")
    if isinstance(pool, (bytes, bytearray, memoryview)):
        return bytes(pool)
    raise TypeError(f"pool handle must be str or bytes, not {type(pool).__name__}")


def _policy(
    policy: Union[str, int], weight: int, priority: int, load: float, degradation: float
) -> _Policy:
    return _Policy(
        _lookup(_POLICIES, policy, "policy"),
        weight,
        priority,
        _load_raw(load),
        _load_raw(degradation),
    )


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


class Config:
    """What a :class:`Context` needs: registrars, timers, profile.

    :param registrars: registrar URLs, tried in order: ``"tcp://HOST:PORT"``
        or ``"sctp://HOST[,HOST...]:PORT"``.
    :param profile: ``"rfc"`` (RFC 5352 timers, the default) or ``"rsplib"``;
        applied before the other settings.
    :param timers: timer name to seconds (float), e.g.
        ``{"t1": 2.0, "t5": 0.1, "stale_cache": 0.1}``. Names: t1 (request),
        t2 (registration), t3 (deregistration), t4 (re-registration; 0 = RFC
        rule), t5 (server hunt), t7 (outdate), stale_cache, retran_max,
        unreachable_holdoff, shutdown.
    :param reglife_unit: unit of ``reglife``: ``"s"`` (RFC 5354) or ``"ms"``
        (RSPLIB); must match the registrar's.
    :param announce: ``"GROUP:PORT"`` to learn registrars from announces.
    :param max_reg_attempt: MAX-REG-ATTEMPT (default 2).
    :param max_request_retransmit: MAX-REQUEST-RETRANSMIT (default 2).

    The settings are checked when the object is made (:class:`InvalidArgument`
    for a bad URL or timer).
    """

    def __init__(
        self,
        registrars: Iterable[str] = (),
        *,
        profile: Union[str, int] = "rfc",
        timers: Optional[Mapping[str, float]] = None,
        reglife_unit: Union[str, int] = "s",
        announce: Optional[str] = None,
        max_reg_attempt: Optional[int] = None,
        max_request_retransmit: Optional[int] = None,
    ) -> None:
        if isinstance(registrars, str):
            registrars = [registrars]
        self.registrars = list(registrars)
        self.profile = profile
        self.timers = dict(timers or {})
        self.reglife_unit = reglife_unit
        self.announce = announce
        self.max_reg_attempt = max_reg_attempt
        self.max_request_retransmit = max_request_retransmit
        _check(load_library().rserpool_config_free(self._build()))

    def __repr__(self) -> str:
        return (
            f"Config(registrars={self.registrars!r}, profile={self.profile!r}, "
            f"timers={self.timers!r}, reglife_unit={self.reglife_unit!r})"
        )

    def _build(self) -> int:
        """A new C configuration handle (the caller frees it)."""
        lib = load_library()
        h = _c.c_void_p()
        _check(lib.rserpool_config_new(_c.byref(h)))
        cfg = h.value
        try:
            _check(lib.rserpool_config_set_profile(cfg, _lookup(_PROFILES, self.profile, "profile")))
            for url in self.registrars:
                _check(lib.rserpool_config_add_registrar(cfg, url.encode()))
            if self.announce is not None:
                _check(lib.rserpool_config_set_announce(cfg, self.announce.encode()))
            for name, seconds in self.timers.items():
                ms = int(round(seconds * 1000))
                if ms < 0 or ms > 0xFFFFFFFF:
                    raise InvalidArgument(-2, f"timer {name}: {seconds!r} s out of range")
                _check(lib.rserpool_config_set_timer(cfg, _lookup(_TIMERS, name, "timer"), ms))
            _check(
                lib.rserpool_config_set_reglife_unit(
                    cfg, _lookup(_UNITS, self.reglife_unit, "reglife unit")
                )
            )
            if self.max_reg_attempt is not None or self.max_request_retransmit is not None:
                _check(
                    lib.rserpool_config_set_attempts(
                        cfg,
                        2 if self.max_reg_attempt is None else self.max_reg_attempt,
                        2 if self.max_request_retransmit is None else self.max_request_retransmit,
                    )
                )
        except BaseException:
            lib.rserpool_config_free(cfg)
            raise
        return cfg


# ---------------------------------------------------------------------------
# Server information
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """A pool element chosen for a pool user.

    ``address`` is ``(host, port)`` of its first address, ready for
    ``socket.create_connection`` or ``sock.connect``.
    """

    id: int
    transport: str
    protocol: int
    port: int
    transport_use: int
    policy: str
    weight: int
    priority: int
    load: float
    degradation: float
    addresses: Tuple[str, ...]
    addr_total: int

    @property
    def address(self) -> Tuple[str, int]:
        """``(first address, port)`` for ``socket.connect``."""
        return (self.addresses[0], self.port)

    @property
    def family(self) -> int:
        """``socket.AF_INET6`` or ``socket.AF_INET`` for the first address."""
        return socket.AF_INET6 if ":" in self.addresses[0] else socket.AF_INET

    def connect(self, timeout: Optional[float] = None) -> socket.socket:
        """Connect a TCP socket to the first address that answers.

        Raises the last :class:`OSError` when none does.
        """
        if self.protocol != _TRANSPORTS["tcp"]:
            raise InvalidArgument(-2, f"connect() handles TCP only, not {self.transport}")
        last: Optional[OSError] = None
        for a in self.addresses:
            try:
                return socket.create_connection((a, self.port), timeout=timeout)
            except OSError as e:
                last = e
        assert last is not None
        raise last

    @classmethod
    def _from_c(cls, s: _ServerInfo) -> "ServerInfo":
        n = min(int(s.addr_count), _MAX_ADDRS)
        return cls(
            id=int(s.pe_id),
            transport=_TRANSPORT_NAMES.get(s.protocol, str(s.protocol)),
            protocol=int(s.protocol),
            port=int(s.port),
            transport_use=int(s.transport_use),
            policy=_POLICY_NAMES.get(s.policy.policy_type, str(s.policy.policy_type)),
            weight=int(s.policy.weight),
            priority=int(s.policy.priority),
            load=s.policy.load / _LOAD_MAX,
            degradation=s.policy.degradation / _LOAD_MAX,
            addresses=tuple(s.addrs[i].text.decode("ascii") for i in range(n)),
            addr_total=int(s.addr_total),
        )


# ---------------------------------------------------------------------------
# Context and pool elements
# ---------------------------------------------------------------------------


class Context:
    """An ASAP endpoint with its own thread: the pool elements and the pool
    user of one application.

    ``Context(config)`` or ``Context(registrars=[...], timers=...)`` (keyword
    arguments make a :class:`Config`). Close it with :meth:`close` or use it
    as a context manager; closing deregisters the PEs still registered.
    Using a closed context raises :class:`ContextClosed`.
    """

    def __init__(self, config: Optional[Config] = None, **kwargs: Any) -> None:
        self._handle: Optional[int] = None
        self._lock = threading.Lock()
        if config is None:
            config = Config(**kwargs)
        elif kwargs:
            raise TypeError("give either a Config or keyword arguments, not both")
        lib = load_library()
        cfg = config._build()
        try:
            h = _c.c_void_p()
            _check(lib.rserpool_context_new(cfg, _c.byref(h)))
        finally:
            lib.rserpool_config_free(cfg)
        self._handle = h.value
        self.config = config

    def _h(self) -> int:
        h = self._handle
        if h is None:
            raise ContextClosed(-4, "the context is closed")
        return h

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._handle is None

    def close(self) -> None:
        """Deregister the remaining PEs (waiting at most the shutdown timer),
        stop the thread. Closing twice is allowed."""
        with self._lock:
            h, self._handle = self._handle, None
        if h is not None:
            _check(load_library().rserpool_context_free(h))

    def __enter__(self) -> "Context":
        self._h()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"handle {self._handle:#x}"
        return f"<rserpool.Context {state}>"

    # -- pool elements ------------------------------------------------------

    def register_pe(
        self,
        pool: Union[str, bytes],
        *,
        port: int,
        addresses: Sequence[str] = ("127.0.0.1",),
        transport: Union[str, int] = "tcp",
        transport_use: Union[str, int] = "data",
        policy: Union[str, int] = "rr",
        weight: int = 0,
        priority: int = 0,
        load: float = 0.0,
        degradation: float = 0.0,
        reglife: Optional[int] = None,
        pe_id: int = 0,
    ) -> "PoolElement":
        """Register a pool element and wait until the registrar granted it.

        :param pool: the pool handle (str, UTF-8 encoded, or bytes).
        :param port: the port pool users connect to.
        :param addresses: concrete numeric addresses (SCTP: several, others: one).
        :param transport: ``"tcp"``, ``"udp"``, ``"sctp"``, ``"udplite"``, ``"dccp"``.
        :param transport_use: ``"data"`` or ``"control"`` (data plus control).
        :param policy: ``"rr"``, ``"wrr"``, ``"random"``, ``"wrand"``,
            ``"priority"``, ``"lu"``, ``"lud"``, ``"plu"``, ``"rlu"`` (or the
            long names, or the RSERPOOL_POLICY_* number).
        :param weight: for the weighted policies.
        :param priority: for ``"priority"``.
        :param load: for the Least Used policies, 0.0 (idle) to 1.0 (full).
        :param degradation: for ``"lud"``/``"plu"``, same scale.
        :param reglife: registration life in the configured unit; -1 infinite;
            ``None`` the library default (60).
        :param pe_id: a fixed PE identifier; 0 = random.
        :returns: the registered :class:`PoolElement`; the library keeps it
            registered until :meth:`PoolElement.deregister` or :meth:`close`.
        :raises NoRegistrar, Timeout, ProtocolError, InvalidArgument:
        """
        lib = load_library()
        handle = _pool_bytes(pool)
        params = _PeParams()
        _check(lib.rserpool_pe_params_init(_c.byref(params)))
        addrs = [a.encode("ascii") for a in addresses]
        arr = (_c.c_char_p * max(len(addrs), 1))(*addrs)
        params.protocol = _lookup(_TRANSPORTS, transport, "transport")
        if not 0 < port < 65536:
            raise InvalidArgument(-2, f"port {port!r} is not 1..65535")
        params.port = port
        params.transport_use = _lookup(_USES, transport_use, "transport use")
        params.addrs = _c.cast(arr, _c.POINTER(_c.c_char_p))
        params.addr_count = len(addrs)
        params.policy = _policy(policy, weight, priority, load, degradation)
        if reglife is not None:
            params.reg_life = reglife
        params.pe_id = pe_id
        out = _c.c_uint32()
        _check(lib.rserpool_register_pe(self._h(), handle, len(handle), _c.byref(params), _c.byref(out)))
        return PoolElement(self, handle, int(out.value))

    # -- pool user ------------------------------------------------------------

    def get_primary_server(self, pool: Union[str, bytes]) -> ServerInfo:
        """A pool element of ``pool`` chosen by the pool's policy (from the
        cache when fresh, else asking the registrar).

        :raises UnknownPool, NoUsableElement, NoRegistrar, Timeout:
        """
        handle = _pool_bytes(pool)
        out = _ServerInfo()
        _check(load_library().rserpool_get_primary_server(self._h(), handle, len(handle), _c.byref(out)))
        return ServerInfo._from_c(out)

    def get_next_server(self, pool: Union[str, bytes], failed_id: int) -> ServerInfo:
        """Report ``failed_id`` unreachable and return the next pool element
        by policy (as :meth:`get_primary_server`)."""
        handle = _pool_bytes(pool)
        out = _ServerInfo()
        _check(
            load_library().rserpool_get_next_server(
                self._h(), handle, len(handle), failed_id, _c.byref(out)
            )
        )
        return ServerInfo._from_c(out)

    def report_failure(self, pool: Union[str, bytes], pe_id: int) -> None:
        """Report a pool element unreachable without asking for another (does
        not wait)."""
        handle = _pool_bytes(pool)
        _check(load_library().rserpool_report_failure(self._h(), handle, len(handle), pe_id))

    # -- enhanced mode: sessions ---------------------------------------------

    def open_session(self, pool: Union[str, bytes], **options: Any) -> "Session":
        """Open an enhanced-mode session to ``pool``: the library picks a PE,
        connects, and fails over when it fails.

        Options (all keyword): ``nonblock`` (False: wait until the first PE
        is connected), ``open_timeout`` (seconds; None: until connected or
        given up), ``auto_failover`` (True), ``upper_layer_acks`` (True),
        ``ack_events`` (False), ``connect_timeout`` (5.0 s),
        ``retry_interval`` (1.0 s), ``max_attempts`` (5), ``max_buffered``
        (1024), ``max_buffered_bytes`` (4 MiB).

        :raises UnknownPool, NoUsableElement, NoRegistrar, Timeout:
        """
        handle = _pool_bytes(pool)
        params = _session_params(options)
        out = _c.c_void_p()
        _check(
            load_library().rserpool_session_open(
                self._h(), handle, len(handle), _c.byref(params), _c.byref(out)
            )
        )
        return Session(out.value, self)

    def open_session_addr(
        self, url: str, failover_pool: Union[str, bytes, None] = None, **options: Any
    ) -> "Session":
        """Open a session to the pool element at a transport address
        (``tcp://ADDR:PORT`` or ``sctp://...``); with ``failover_pool`` it
        fails over into that pool. Options as :meth:`open_session`."""
        params = _session_params(options)
        fpool = None
        if failover_pool is not None:
            fpool = _pool_bytes(failover_pool)
            params.failover_pool = fpool
            params.failover_pool_len = len(fpool)
        out = _c.c_void_p()
        _check(
            load_library().rserpool_session_open_addr(
                self._h(), url.encode(), _c.byref(params), _c.byref(out)
            )
        )
        return Session(out.value, self)

    def pe_listen(
        self,
        pool: Union[str, bytes],
        url: str = "tcp://127.0.0.1:0",
        *,
        policy: Union[str, int] = "rr",
        weight: int = 0,
        priority: int = 0,
        load: float = 0.0,
        degradation: float = 0.0,
        reglife: Optional[int] = None,
        pe_id: int = 0,
    ) -> "PeServer":
        """Listen at ``url`` (port 0: the kernel's) and register a pool
        element of ``pool`` there; sessions of pool users come from
        :meth:`PeServer.accept`. Policy arguments as :meth:`register_pe`.

        :raises NoRegistrar, Timeout, ProtocolError, InvalidArgument, OSFailure:
        """
        lib = load_library()
        handle = _pool_bytes(pool)
        params = _PeListenParams()
        _check(lib.rserpool_pe_listen_params_init(_c.byref(params)))
        params.pool_handle = handle
        params.handle_len = len(handle)
        params.listen_url = url.encode()
        params.policy = _policy(policy, weight, priority, load, degradation)
        if reglife is not None:
            params.reg_life = reglife
        params.pe_id = pe_id
        out = _c.c_void_p()
        _check(lib.rserpool_pe_listen(self._h(), _c.byref(params), _c.byref(out)))
        return PeServer(out.value, self)


class PoolElement:
    """A registered pool element (returned by :meth:`Context.register_pe`).

    As a context manager it deregisters on exit (unless already gone).
    """

    def __init__(self, context: Context, pool: bytes, pe_id: int) -> None:
        self.context = context
        self.pool = pool
        self.id = pe_id

    def __repr__(self) -> str:
        return f"<rserpool.PoolElement {self.id:#010x} in {self.pool!r}>"

    def update_load(self, load: float) -> None:
        """Set the load (Least Used policies; 0.0 idle to 1.0 full) and
        re-register at once."""
        _check(load_library().rserpool_update_load(self.context._h(), self.id, _load_raw(load)))

    def update_policy(
        self,
        policy: Union[str, int],
        *,
        weight: int = 0,
        priority: int = 0,
        load: float = 0.0,
        degradation: float = 0.0,
    ) -> None:
        """Replace the policy values (the policy type must stay the same)."""
        p = _policy(policy, weight, priority, load, degradation)
        _check(load_library().rserpool_update_policy(self.context._h(), self.id, _c.byref(p)))

    def status(self) -> str:
        """``"registering"``, ``"registered"``, ``"lost"`` or ``"deregistering"``."""
        out = _c.c_uint32()
        _check(load_library().rserpool_pe_status(self.context._h(), self.id, _c.byref(out)))
        return _STATUS.get(out.value, str(out.value))

    def deregister(self) -> None:
        """Deregister and wait for the registrar's answer. The PE is forgotten
        whatever the result; a second call raises :class:`UnknownPE`."""
        _check(load_library().rserpool_deregister(self.context._h(), self.id))

    def __enter__(self) -> "PoolElement":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.context.closed:
            return
        try:
            self.deregister()
        except (UnknownPE, InvalidHandle):
            pass


# ---------------------------------------------------------------------------
# Enhanced mode: sessions
# ---------------------------------------------------------------------------

_NOTIFY_KINDS = {
    1: "data",
    2: "connected",
    3: "failover",
    4: "peer_failed",
    5: "failed",
    6: "acked",
    7: "cookie_echo",
    8: "business_card",
    9: "closed",
}
_STATES = {1: "selecting", 2: "connecting", 3: "up", 4: "peer_failed", 5: "closed"}
_SEND_FLAGS = {None: 0, True: 0x1, False: 0x2}
_SEND_UNORDERED = 0x1000


def _ms(seconds: Optional[float], what: str, *, none: int) -> int:
    if seconds is None:
        return none
    ms = int(round(seconds * 1000))
    if ms < 0 or ms > 0xFFFFFFFF:
        raise InvalidArgument(-2, f"{what}: {seconds!r} s out of range")
    return ms


def _session_params(options: Mapping[str, Any]) -> _SessionParams:
    known = {
        "nonblock",
        "open_timeout",
        "auto_failover",
        "upper_layer_acks",
        "ack_events",
        "connect_timeout",
        "retry_interval",
        "max_attempts",
        "max_buffered",
        "max_buffered_bytes",
    }
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown session option(s): {', '.join(sorted(unknown))}")
    p = _SessionParams()
    _check(load_library().rserpool_session_params_init(_c.byref(p)))
    for flag in ("nonblock", "auto_failover", "upper_layer_acks", "ack_events"):
        if flag in options:
            setattr(p, flag, 1 if options[flag] else 0)
    if "open_timeout" in options:
        p.open_timeout_ms = _ms(options["open_timeout"], "open_timeout", none=0)
    if "connect_timeout" in options:
        p.connect_timeout_ms = _ms(options["connect_timeout"], "connect_timeout", none=0)
    if "retry_interval" in options:
        p.retry_interval_ms = _ms(options["retry_interval"], "retry_interval", none=0)
    for n in ("max_attempts", "max_buffered", "max_buffered_bytes"):
        if n in options:
            setattr(p, n, int(options[n]))
    return p


def _timeout_ms(timeout: Optional[float]) -> int:
    if timeout is None:
        return -1
    if timeout <= 0:
        return 0
    return max(1, min(int(timeout * 1000 + 0.999), 0x7FFFFFFF))


@dataclass(frozen=True)
class Notification:
    """What :meth:`Session.recv` received.

    ``kind`` is ``"data"`` (``data``, ``ppid``, ``stream``), ``"connected"``
    (``pe_id``), ``"failover"`` (``from_pe_id`` to ``pe_id``, ``resent``:
    sequence numbers re-sent to the new PE), ``"peer_failed"`` (``pe_id``),
    ``"failed"`` (``error`` code, ``count`` attempts), ``"acked"``
    (``seq``), ``"cookie_echo"`` (``data``), ``"business_card"`` (``data``
    the pool handle, ``count`` PEs, ``pe_id`` the first) or ``"closed"``.
    """

    kind: str
    data: bytes = b""
    ppid: int = 0
    stream: int = 0
    pe_id: int = 0
    from_pe_id: int = 0
    seq: int = 0
    resent: Tuple[int, ...] = ()
    error: int = 0
    count: int = 0


@dataclass(frozen=True)
class SendReceipt:
    """Where :meth:`Session.send` sent: the message's sequence number in the
    session and the PE it is addressed to (0 while none is chosen yet, or
    for a PE reached by transport address)."""

    seq: int
    pe_id: int


class Session:
    """An enhanced-mode session, a pool user's (:meth:`Context.open_session`)
    or a pool element's (:meth:`PeServer.accept`).

    :meth:`fileno` makes it usable with :mod:`select` and :mod:`selectors`:
    readable while a notification waits. Close it with :meth:`close` or use
    it as a context manager.
    """

    def __init__(self, handle: int, context: Context) -> None:
        self._handle: Optional[int] = handle
        self.context = context
        self._buf = _c.create_string_buffer(MAX_MESSAGE_LEN)
        self._recv_lock = threading.Lock()
        self._callbacks: Dict[str, Any] = {}

    def _h(self) -> int:
        h = self._handle
        if h is None:
            raise SessionClosed(-207, "the session is closed")
        return h

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._handle is None

    def close(self) -> None:
        """Close gracefully (what is buffered still goes out) and free the
        handle; closing twice is allowed. Waits for a callback of this
        session running on the library's thread."""
        h, self._handle = self._handle, None
        if h is not None:
            _check(load_library().rserpool_session_close(h))
            self._callbacks.clear()

    def __enter__(self) -> "Session":
        self._h()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def fileno(self) -> int:
        """A descriptor readable while a notification waits (owned by the
        session: do not close it)."""
        fd = _c.c_int(-1)
        _check(load_library().rserpool_session_fd(self._h(), _c.byref(fd)))
        return int(fd.value)

    def send(
        self,
        data: Union[bytes, bytearray, memoryview],
        ppid: int,
        *,
        pe_id: Optional[int] = None,
        failover: Optional[bool] = None,
        unordered: bool = False,
    ) -> SendReceipt:
        """Queue a message (never waits). A pool user's goes to its pool, or
        with ``pe_id`` to that PE of the pool; ``failover`` True/False
        overrides the session's automatic fail-over while it is buffered.
        A pool element's goes to its pool user.

        :raises InvalidArgument: PPID 11, too long.
        :raises WouldBlock: the session's buffer is full.
        :raises UnknownPE, SessionClosed:
        """
        payload = bytes(data)
        flags = _SEND_FLAGS[failover] | (_SEND_UNORDERED if unordered else 0)
        dest = None if pe_id is None else _c.byref(_Dest(1, pe_id))
        pe = _c.c_uint32(0)
        seq = _c.c_uint64(0)
        _check(
            load_library().rserpool_data_send(
                self._h(), dest, payload, len(payload), ppid, flags, _c.byref(pe), _c.byref(seq)
            )
        )
        return SendReceipt(int(seq.value), int(pe.value))

    def recv(self, timeout: Optional[float] = None) -> Optional[Notification]:
        """The next notification, waiting at most ``timeout`` seconds (None:
        no bound, 0: not at all); None when nothing came in time.

        :raises SessionClosed: after the ``"closed"`` notification.
        """
        lib = load_library()
        n = _Notification()
        with self._recv_lock:
            buf = self._buf
            rc = lib.rserpool_recv(self._h(), _c.byref(n), buf, len(buf), _timeout_ms(timeout))
            while rc == -3:  # too large for the buffer: it stays queued
                buf = _c.create_string_buffer(int(n.len))
                rc = lib.rserpool_recv(self._h(), _c.byref(n), buf, len(buf), 0)
            if rc in (-201, -205):
                return None
            _check(rc)
            raw = buf.raw[: int(n.len)]
        kind = _NOTIFY_KINDS.get(n.kind, str(n.kind))
        resent: Tuple[int, ...] = ()
        if kind == "failover":
            resent = tuple(
                int.from_bytes(raw[i : i + 8], sys.byteorder)
                for i in range(0, len(raw), 8)
            )
            raw = b""
        return Notification(
            kind=kind,
            data=raw,
            ppid=int(n.ppid),
            stream=int(n.stream),
            pe_id=int(n.pe_id),
            from_pe_id=int(n.from_pe_id),
            seq=int(n.seq),
            resent=resent,
            error=int(n.error),
            count=int(n.count),
        )

    def on_data(self, callback: Optional[Any]) -> None:
        """Deliver every message from the PE to ``callback(session, data,
        ppid, stream)`` on the library's thread instead of :meth:`recv`
        (pool user sessions; None removes it). Keep it short; waiting calls
        raise :class:`WouldDeadlock` there."""
        lib = load_library()
        if callback is None:
            _check(lib.rserpool_set_data_indication(self._h(), _DATA_CB(), None))
            self._callbacks.pop("data", None)
            return

        def trampoline(_s: Any, ppid: int, stream: int, data: Any, length: int, _u: Any) -> None:
            try:
                callback(self, _c.string_at(data, length), int(ppid), int(stream))
            except Exception:  # never let an exception unwind into the library
                import traceback

                traceback.print_exc()

        cb = _DATA_CB(trampoline)
        _check(lib.rserpool_set_data_indication(self._h(), cb, None))
        self._callbacks["data"] = cb

    def on_failover(self, callback: Optional[Any]) -> None:
        """Call ``callback(session, from_pe_id, to_pe_id, resent)`` on the
        library's thread right after a fail-over's new connection is up and
        before anything else goes there (messages it sends go first);
        ``resent`` are the sequence numbers about to be re-sent. None removes
        it (pool user sessions)."""
        lib = load_library()
        if callback is None:
            _check(lib.rserpool_set_failover_callback(self._h(), _FAILOVER_CB(), None))
            self._callbacks.pop("failover", None)
            return

        def trampoline(_s: Any, frm: int, to: int, resent: Any, count: int, _u: Any) -> None:
            try:
                callback(self, int(frm), int(to), tuple(int(resent[i]) for i in range(count)))
            except Exception:
                import traceback

                traceback.print_exc()

        cb = _FAILOVER_CB(trampoline)
        _check(lib.rserpool_set_failover_callback(self._h(), cb, None))
        self._callbacks["failover"] = cb

    def failover_now(self) -> None:
        """After a ``"peer_failed"`` notification: fail over now."""
        _check(load_library().rserpool_session_failover_now(self._h()))

    def cookie(self) -> bytes:
        """The latest cookie the PEs sent (pool user sessions; b"" if none)."""
        lib = load_library()
        need = _c.c_size_t(0)
        rc = lib.rserpool_session_cookie(self._h(), None, 0, _c.byref(need))
        while rc == -3:
            buf = _c.create_string_buffer(int(need.value))
            rc = lib.rserpool_session_cookie(self._h(), buf, len(buf), _c.byref(need))
            if rc == 0:
                return buf.raw[: int(need.value)]
        _check(rc)
        return b""

    def status(self) -> Dict[str, Any]:
        """A pool user session's state (``"selecting"``, ``"connecting"``,
        ``"up"``, ``"peer_failed"``, ``"closed"``), current PE and counters."""
        st = _SessionStatus()
        _check(load_library().rserpool_session_get_status(self._h(), _c.byref(st)))
        out: Dict[str, Any] = {name: int(getattr(st, name)) for name, _ in st._fields_}
        out["state"] = _STATES.get(st.state, str(st.state))
        return out

    def send_cookie(self, cookie: Union[bytes, bytearray]) -> None:
        """Pool element sessions: hand the pool user state to echo to the
        next PE after a fail-over."""
        data = bytes(cookie)
        _check(load_library().rserpool_send_cookie(self._h(), data, len(data)))

    def ack(self) -> None:
        """Pool element sessions: acknowledge what was received (handled)."""
        _check(load_library().rserpool_session_ack(self._h()))


class PeServer:
    """A registered pool element listening for pool users
    (:meth:`Context.pe_listen`). :meth:`fileno` is readable while a session
    waits to be accepted. Closing deregisters the PE."""

    def __init__(self, handle: int, context: Context) -> None:
        self._handle: Optional[int] = handle
        self.context = context
        lib = load_library()
        pe = _c.c_uint32(0)
        _check(lib.rserpool_pe_server_pe_id(handle, _c.byref(pe)))
        self.pe_id = int(pe.value)
        buf = _c.create_string_buffer(256)
        length = _c.c_size_t(0)
        _check(lib.rserpool_pe_server_local_url(handle, buf, len(buf), _c.byref(length)))
        #: Where it listens (the kernel's port if the URL said 0).
        self.url = buf.value.decode()

    def _h(self) -> int:
        h = self._handle
        if h is None:
            raise SessionClosed(-207, "the server is closed")
        return h

    def fileno(self) -> int:
        fd = _c.c_int(-1)
        _check(load_library().rserpool_pe_server_fd(self._h(), _c.byref(fd)))
        return int(fd.value)

    def accept(self, timeout: Optional[float] = None) -> Optional[Session]:
        """The next pool user's session, waiting at most ``timeout`` seconds
        (None: no bound); None when none came in time.

        :raises SessionClosed: the server was closed meanwhile.
        """
        out = _c.c_void_p()
        rc = load_library().rserpool_pe_accept(self._h(), _timeout_ms(timeout), _c.byref(out))
        if rc in (-201, -205):
            return None
        _check(rc)
        return Session(out.value, self.context)

    def close(self) -> None:
        """Deregister (waiting for the registrar) and stop listening; closing
        twice is allowed."""
        h, self._handle = self._handle, None
        if h is not None:
            _check(load_library().rserpool_pe_server_close(h))

    def __enter__(self) -> "PeServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<rserpool.PeServer {self.pe_id:#010x} at {self.url}>"


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def decode(message: Union[bytes, bytearray, memoryview], ppid: int = PPID_ASAP) -> Dict[str, Any]:
    """Decode one ASAP (``ppid`` 11) or ENRP (12) message into a dict (the
    library's JSON rendering: ``type``, flags, parameters).

    :raises MalformedMessage: with ``offset`` of the problem.
    :raises InvalidArgument: for another ``ppid``.
    """
    lib = load_library()
    data = bytes(message)
    need = _c.c_size_t(0)
    off = _c.c_size_t(0)
    rc = lib.rserpool_decode_json(data, len(data), ppid, None, 0, _c.byref(need), _c.byref(off))
    while rc == -3:  # RSERPOOL_ERR_BUFFER_TOO_SMALL: need holds the size
        buf = _c.create_string_buffer(need.value)
        length = _c.c_size_t(0)
        rc = lib.rserpool_decode_json(
            data, len(data), ppid, buf, len(buf), _c.byref(length), _c.byref(off)
        )
        if rc == 0:
            return json.loads(buf.raw[: length.value].decode("utf-8"))
        need = length
    if rc == -300:
        raise MalformedMessage(rc, offset=int(off.value))
    _check(rc)
    raise InternalError(-900, "decode answered OK to a size query")
