"""Tests of the Python bindings: version and decode without a registrar; pool
elements and a pool user through a real `rserpool registrar` process (see
conftest.py), with real TCP echo servers behind the PEs."""

import ctypes
import socket
import socketserver
import threading
import time

import pytest

import rserpool
from conftest import DEADLINE_S

POOL = "py-echo"

# Vector 3 of the digest: ASAP_HANDLE_RESOLUTION for "abc".
HR_ABC = bytes([0x05, 0x00, 0x00, 0x0B, 0x00, 0x09, 0x00, 0x07, 0x61, 0x62, 0x63, 0x00])
# Vector 13: ENRP_INIT_TAKEOVER of 0xDEADBEEF by 0xCAFEBABE.
INIT_TAKEOVER = bytes(
    [0x07, 0x00, 0x00, 0x10, 0xCA, 0xFE, 0xBA, 0xBE, 0x00, 0x00, 0x00, 0x00, 0xDE, 0xAD, 0xBE, 0xEF]
)

#: Short timers so failures come quickly, generous enough for a loaded machine.
FAST = {
    "t1": 2.0,
    "t2": 2.0,
    "t3": 2.0,
    "t5": 0.1,
    "retran_max": 0.3,
    "stale_cache": 0.1,
    "shutdown": 1.0,
}


class EchoServer:
    """A TCP echo server on an ephemeral loopback port, in a thread."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                data = self.request.recv(4096)
                if not data:
                    return
                self.request.sendall(data)

    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self.Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        """Stop accepting and close the listening socket: connects are refused."""
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(DEADLINE_S)


def echo(server: rserpool.ServerInfo, payload: bytes) -> bytes:
    with server.connect(timeout=DEADLINE_S) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


def eventually(what, f, deadline=DEADLINE_S):
    """Poll f() until it returns something truthy; fail after the deadline."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        try:
            v = f()
            if v:
                return v
        except rserpool.RserpoolError as e:
            last = e
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what} (last error: {last})")


# -- without a registrar -------------------------------------------------------


def test_version_and_layout():
    assert rserpool.version() == "0.1.0"
    assert rserpool.version_number() == rserpool.API_VERSION
    lib = rserpool.load_library()
    assert lib.rserpool_server_info_size() == ctypes.sizeof(rserpool._ServerInfo)


def test_library_checks():
    # Not librserpool: refused by name, and the loaded library stays in use.
    with pytest.raises(rserpool.LibraryError, match="lacks rserpool_"):
        rserpool.load_library("libc.so.6")
    with pytest.raises(rserpool.LibraryError, match="no such file|not found|cannot open"):
        rserpool.load_library("/nonexistent/librserpool.so")
    assert rserpool.version() == "0.1.0"
    assert rserpool._compatible(rserpool.API_VERSION)
    assert rserpool._compatible(rserpool.API_VERSION + 1)  # a patch release
    assert not rserpool._compatible(rserpool.API_VERSION + 100)  # 0.x minor: breaking
    assert not rserpool._compatible(rserpool.API_VERSION + 10000)


def test_decode():
    d = rserpool.decode(HR_ABC)
    assert d["type"] == "ASAP_HANDLE_RESOLUTION"
    assert d["pool_handle"] == "abc"
    e = rserpool.decode(INIT_TAKEOVER, ppid=rserpool.PPID_ENRP)
    assert e["type"] == "ENRP_INIT_TAKEOVER"
    assert "3735928559" in str(e)


def test_decode_errors():
    bad = bytearray(HR_ABC)
    bad[7] = 0x02  # the pool handle's Length below 4
    with pytest.raises(rserpool.MalformedMessage) as ei:
        rserpool.decode(bytes(bad))
    assert ei.value.code == -300 and ei.value.offset == 4
    with pytest.raises(rserpool.InvalidArgument):
        rserpool.decode(HR_ABC, ppid=99)
    with pytest.raises(rserpool.MalformedMessage):
        rserpool.decode(b"")


def test_config_errors():
    with pytest.raises(rserpool.InvalidArgument) as ei:
        rserpool.Config(registrars=["not a url"])
    assert ei.value.code == -2 and isinstance(ei.value, ValueError)
    with pytest.raises(rserpool.InvalidArgument):
        rserpool.Config(timers={"t9": 1.0})
    with pytest.raises(rserpool.InvalidArgument):
        rserpool.Config(timers={"t2": 0})
    with pytest.raises(rserpool.InvalidArgument):
        rserpool.Config(profile="nope")
    cfg = rserpool.Config(registrars="tcp://127.0.0.1:3863", profile="rsplib", reglife_unit="ms")
    assert cfg.registrars == ["tcp://127.0.0.1:3863"]


def test_error_classes():
    assert issubclass(rserpool.UnknownPool, rserpool.ProtocolError)
    assert issubclass(rserpool.NoRegistrar, rserpool.TransportError)
    assert issubclass(rserpool.ContextClosed, rserpool.InvalidHandle)
    e = rserpool.Timeout(-201)
    assert e.code == -201 and "timed out" in e.message.lower()
    assert rserpool._error_class(-105) is rserpool.ProtocolError
    assert rserpool._error_class(-109) is rserpool.UnknownPool


def test_no_registrar_reachable():
    # Nothing listens on port 1 of the loopback: every hunt fails at once.
    timers = dict(FAST, t1=0.2, t2=0.2, t3=0.2, shutdown=0)
    t0 = time.monotonic()
    with rserpool.Context(registrars=["tcp://127.0.0.1:1"], timers=timers) as ctx:
        with pytest.raises((rserpool.NoRegistrar, rserpool.Timeout)):
            ctx.register_pe(POOL, port=7, addresses=["127.0.0.1"])
        with pytest.raises((rserpool.NoRegistrar, rserpool.Timeout)):
            ctx.get_primary_server(POOL)
        with pytest.raises((rserpool.NoRegistrar, rserpool.Timeout)):
            ctx.get_next_server(POOL, 99)
        ctx.report_failure(POOL, 99)  # queued for a registrar that may come
    assert time.monotonic() - t0 < 45


def test_closed_context_raises():
    ctx = rserpool.Context(registrars=["tcp://127.0.0.1:1"], timers=dict(FAST, shutdown=0))
    pe = rserpool.PoolElement(ctx, b"x", 1234)
    ctx.close()
    ctx.close()  # twice is fine
    assert ctx.closed
    with pytest.raises(rserpool.ContextClosed) as ei:
        ctx.get_primary_server(POOL)
    assert ei.value.code == -4
    for call in (
        lambda: ctx.get_next_server(POOL, 1),
        lambda: ctx.report_failure(POOL, 1),
        lambda: ctx.register_pe(POOL, port=7),
        lambda: pe.update_load(0.5),
        lambda: pe.status(),
        lambda: pe.deregister(),
    ):
        with pytest.raises(rserpool.InvalidHandle):
            call()
    with pytest.raises(rserpool.ContextClosed):
        with ctx:
            pass
    with pe:  # leaving a PE block of a closed context is quiet
        pass


def test_close_while_another_thread_waits():
    """Closing a context under a blocked call ends that call with an error,
    never a crash; calls after close raise."""
    timers = dict(FAST, t1=0.5, t2=0.5, shutdown=0)
    ctx = rserpool.Context(registrars=["tcp://127.0.0.1:1"], timers=timers)
    ended = []

    def worker() -> None:
        # Until the close is seen; every call before it fails (no registrar).
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            try:
                ctx.get_primary_server(POOL)
            except rserpool.InvalidHandle as e:
                ended.append(e)
                return
            except (rserpool.NoRegistrar, rserpool.Timeout):
                continue

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    ctx.close()
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive()
    assert len(ended) == 3


def test_argument_errors():
    with rserpool.Context(registrars=["tcp://127.0.0.1:1"], timers=dict(FAST, shutdown=0)) as ctx:
        with pytest.raises(rserpool.InvalidArgument):
            ctx.register_pe(POOL, port=0)
        with pytest.raises(rserpool.InvalidArgument):
            ctx.register_pe(POOL, port=7, policy="fastest")
        with pytest.raises(rserpool.InvalidArgument):
            ctx.register_pe(POOL, port=7, addresses=["0.0.0.0"])
        with pytest.raises(rserpool.InvalidArgument):
            ctx.register_pe(POOL, port=7, load=2.0)
        with pytest.raises(rserpool.InvalidArgument):
            ctx.get_primary_server("")
        with pytest.raises(TypeError):
            ctx.get_primary_server(42)
        with pytest.raises(rserpool.UnknownPE):
            rserpool.PoolElement(ctx, b"x", 4321).deregister()


# -- with a registrar ----------------------------------------------------------


def test_register_resolve_failover(registrar):
    servers = [EchoServer(), EchoServer()]
    try:
        with rserpool.Context(registrars=[registrar.url], timers=FAST) as pe_ctx, rserpool.Context(
            rserpool.Config(registrars=[registrar.url], timers=FAST)
        ) as pu_ctx:
            pes = [
                pe_ctx.register_pe(POOL, port=s.port, addresses=["127.0.0.1"], policy="rr")
                for s in servers
            ]
            assert pes[0].id != pes[1].id
            assert all(p.status() == "registered" for p in pes)
            by_id = {p.id: s for p, s in zip(pes, servers)}

            first = pu_ctx.get_primary_server(POOL)
            assert first.id in by_id
            assert first.transport == "tcp" and first.policy == "rr"
            assert first.addresses == ("127.0.0.1",) and first.addr_total == 1
            assert first.address == ("127.0.0.1", by_id[first.id].port)
            assert first.family == socket.AF_INET
            assert echo(first, b"hello pool") == b"hello pool"

            # The PE dies: its socket closes, connects are refused.
            by_id[first.id].stop()
            with pytest.raises(OSError):
                first.connect(timeout=DEADLINE_S)
            other = pu_ctx.get_next_server(POOL, first.id)
            assert other.id != first.id and other.id in by_id
            assert echo(other, b"after failover") == b"after failover"
            # The failed PE stays skipped.
            assert pu_ctx.get_primary_server(POOL).id == other.id

            # The dead PE's deregistration; the survivor is all that is left.
            dead = next(p for p in pes if p.id == first.id)
            dead.deregister()
            with pytest.raises(rserpool.UnknownPE):
                dead.deregister()
            pu_ctx.report_failure(POOL, first.id)
            assert pu_ctx.get_primary_server(POOL).id == other.id
    finally:
        for s in servers:
            s.stop()


def test_unknown_pool(registrar):
    with rserpool.Context(registrars=[registrar.url], timers=FAST) as ctx:
        with pytest.raises(rserpool.UnknownPool) as ei:
            ctx.get_primary_server("py-no-such-pool")
        assert ei.value.code == -109
        assert isinstance(ei.value, rserpool.ProtocolError)


def test_least_used_load_update(registrar):
    pool = "py-lu"
    with rserpool.Context(registrars=[registrar.url], timers=FAST) as pe_ctx, rserpool.Context(
        registrars=[registrar.url], timers=FAST
    ) as pu_ctx:
        with pe_ctx.register_pe(pool, port=7101, policy="lu", load=0.1) as a, pe_ctx.register_pe(
            pool, port=7102, policy="least_used", load=0.5
        ) as b:
            info = eventually("PE a chosen", lambda: pu_ctx.get_primary_server(pool))
            assert info.id == a.id and info.policy == "lu"
            assert abs(info.load - 0.1) < 1e-6
            a.update_load(0.9)
            eventually("PE b chosen", lambda: pu_ctx.get_primary_server(pool).id == b.id)
            a.update_policy("lu", load=0.0)
            eventually("PE a chosen again", lambda: pu_ctx.get_primary_server(pool).id == a.id)
            with pytest.raises(rserpool.InvalidArgument):
                a.update_policy("rr")
        # Both left their blocks: deregistered.
        with pytest.raises(rserpool.UnknownPE):
            a.status()
        eventually(
            "pool gone",
            lambda: _raises(rserpool.UnknownPool, lambda: pu_ctx.get_primary_server(pool)),
        )


def test_rr_needs_no_load(registrar):
    with rserpool.Context(registrars=[registrar.url], timers=FAST) as ctx:
        with ctx.register_pe("py-rr", port=7201, pe_id=0x1234) as pe:
            assert pe.id == 0x1234
            with pytest.raises(rserpool.InvalidArgument):
                pe.update_load(0.5)


def _raises(exc, f) -> bool:
    try:
        f()
    except exc:
        return True
    return False


class EchoPe:
    """A pool element (rserpool.Context.pe_listen) whose sessions echo every
    message prefixed with the PE identifier, in threads; a session that
    receives b"bye" is closed without an answer."""

    def __init__(self, ctx: rserpool.Context, pool: str) -> None:
        self.server = ctx.pe_listen(pool)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                s = self.server.accept(timeout=0.1)
            except rserpool.SessionClosed:
                return
            if s is not None:
                threading.Thread(target=self._echo, args=(s,), daemon=True).start()

    def _echo(self, s: rserpool.Session) -> None:
        with s:
            while not self.stop.is_set():
                try:
                    n = s.recv(timeout=0.1)
                except rserpool.SessionClosed:
                    return
                if n is None:
                    continue
                if n.kind == "closed" or (n.kind == "data" and n.data == b"bye"):
                    return
                if n.kind == "data":
                    s.send(b"%d:" % self.server.pe_id + n.data, n.ppid)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_S)
        self.server.close()


def test_sessions(registrar):
    import selectors

    timers = dict(FAST, stale_cache=0.0)
    with rserpool.Context(registrars=[registrar.url], timers=FAST) as pe_ctx, rserpool.Context(
        registrars=[registrar.url], timers=timers
    ) as pu_ctx:
        pes = [EchoPe(pe_ctx, "py-sessions") for _ in range(2)]
        try:
            ids = {p.server.pe_id for p in pes}
            assert len(ids) == 2
            assert all(p.server.url.startswith("tcp://127.0.0.1:") for p in pes)
            s = pu_ctx.open_session("py-sessions")
            n = s.recv(DEADLINE_S)
            assert n.kind == "connected" and n.pe_id in ids
            first = n.pe_id
            (other,) = ids - {first}

            # Send, then wait on the descriptor with selectors.
            r = s.send(b"hello", 42)
            assert r == rserpool.SendReceipt(seq=0, pe_id=first)
            with selectors.DefaultSelector() as sel:
                sel.register(s, selectors.EVENT_READ)
                assert sel.select(DEADLINE_S)
                n = s.recv(0)
                assert (n.kind, n.data, n.ppid) == ("data", b"%d:hello" % first, 42)
                assert not sel.select(0)
            assert s.recv(0) is None
            assert s.recv(0.05) is None
            with pytest.raises(rserpool.InvalidArgument):
                s.send(b"x", rserpool.PPID_ASAP)
            with pytest.raises(rserpool.UnknownPE):
                s.send(b"x", 42, pe_id=0x5151)

            # The PE closes the session: the session fails over to the other
            # PE and the callback's message goes first.
            seen = []

            def on_failover(session, frm, to, resent):
                seen.append((frm, to, resent))
                session.send(b"resume", 42)

            s.on_failover(on_failover)
            assert s.send(b"bye", 42).seq == 1
            n = s.recv(DEADLINE_S)
            assert (n.kind, n.data) == ("data", b"%d:resume" % other)
            assert seen and seen[0][:2] == (first, other)
            st = s.status()
            assert st["state"] == "up" and st["pe_id"] == other and st["failovers"] == 1

            # Data by callback.
            got = []
            done = threading.Event()

            def on_data(session, data, ppid, stream):
                got.append((data, ppid))
                done.set()

            s.on_data(on_data)
            s.send(b"via callback", 43)
            assert done.wait(DEADLINE_S)
            assert got == [(b"%d:via callback" % other, 43)]
            s.on_data(None)
            s.close()
            s.close()
            with pytest.raises(rserpool.SessionClosed):
                s.recv(0)

            # A transport address, and a pool nobody serves.
            with pu_ctx.open_session_addr(pes[0].server.url) as d:
                assert d.recv(DEADLINE_S).kind == "connected"
                d.send(b"direct", 44)
                n = d.recv(DEADLINE_S)
                assert n.data == b"%d:direct" % pes[0].server.pe_id
            with pytest.raises(rserpool.UnknownPool):
                pu_ctx.open_session("py-nobody", max_attempts=1, retry_interval=0.05)
            with pytest.raises(TypeError):
                pu_ctx.open_session("py-sessions", bogus=1)
        finally:
            for p in pes:
                p.close()
