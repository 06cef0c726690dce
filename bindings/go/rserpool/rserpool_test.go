package rserpool

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// deadline is generous: the tests must pass on a loaded 2-core machine.
const deadline = 60 * time.Second

// fast timers: failures come quickly, still enough for a loaded machine.
var fast = map[Timer]time.Duration{
	TimerT1Request:        2 * time.Second,
	TimerT2Registration:   2 * time.Second,
	TimerT3Deregistration: 2 * time.Second,
	TimerT5ServerHunt:     100 * time.Millisecond,
	TimerRetranMax:        300 * time.Millisecond,
	TimerStaleCache:       100 * time.Millisecond,
	TimerShutdown:         time.Second,
}

// registrar starts `rserpool registrar --asap tcp://127.0.0.1:0` (the binary
// from RSERPOOL_BIN, else the repository's target/debug) and returns its URL;
// the process is killed when the test ends.
func registrar(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("RSERPOOL_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "..", "target", "debug", "rserpool")
	}
	cmd := exec.Command(bin, "registrar", "--asap", "tcp://127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v (set RSERPOOL_BIN)", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			// (strings.CutPrefix would need Go 1.20; Debian 12 has 1.19.)
			if line := sc.Text(); strings.HasPrefix(line, "listening asap ") {
				urls <- strings.TrimSpace(strings.TrimPrefix(line, "listening asap "))
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case u := <-urls:
		return u
	case <-time.After(deadline):
		t.Fatalf("registrar did not start: %s", stderr.String())
	}
	return ""
}

// echoServer is a TCP echo server on an ephemeral loopback port.
type echoServer struct {
	ln   net.Listener
	port uint16
	wg   sync.WaitGroup
}

func newEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// stop closes the listening socket: connects are refused from then on.
func (s *echoServer) stop() {
	_ = s.ln.Close()
	s.wg.Wait()
}

func echo(t *testing.T, srv *ServerInfo, msg string) string {
	t.Helper()
	c, err := srv.Dial(deadline)
	if err != nil {
		t.Fatalf("dial %s: %v", srv.Address(), err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(deadline))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

func newCtx(t *testing.T, url string, timers map[Timer]time.Duration) *Context {
	t.Helper()
	ctx, err := NewContext(Config{Registrars: []string{url}, Timers: timers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ctx.Close() })
	return ctx
}

func TestVersionAndDecode(t *testing.T) {
	if Version() != "0.1.0" || VersionNumber() != APIVersion {
		t.Fatalf("version %s / %d", Version(), VersionNumber())
	}
	if err := checkLibrary(); err != nil {
		t.Fatal(err)
	}
	hrABC := []byte{0x05, 0x00, 0x00, 0x0b, 0x00, 0x09, 0x00, 0x07, 0x61, 0x62, 0x63, 0x00}
	m, err := Decode(hrABC, PPIDASAP)
	if err != nil {
		t.Fatal(err)
	}
	if m["type"] != "ASAP_HANDLE_RESOLUTION" || m["pool_handle"] != "abc" {
		t.Fatalf("decoded %v", m)
	}
	bad := append([]byte(nil), hrABC...)
	bad[7] = 0x02
	if _, err := Decode(bad, PPIDASAP); !errors.Is(err, ErrMalformed) {
		t.Fatalf("malformed: %v", err)
	}
	if _, err := Decode(hrABC, 99); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad ppid: %v", err)
	}
	if _, err := Decode(nil, PPIDASAP); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := NewContext(Config{Registrars: []string{"not a url"}})
	var e *Error
	if !errors.As(err, &e) || e.Code != -2 {
		t.Fatalf("bad URL: %v", err)
	}
	if _, err := NewContext(Config{Timers: map[Timer]time.Duration{TimerT2Registration: 0}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("T2 0: %v", err)
	}
}

func TestClosedContext(t *testing.T) {
	ctx, err := NewContext(Config{Registrars: []string{"tcp://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	pe := &PoolElement{ctx: ctx, Pool: "x", ID: 1}
	if err := ctx.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ctx.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := ctx.GetPrimaryServer("go-echo"); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("closed: %v", err)
	}
	if _, err := ctx.RegisterPE("go-echo", PEParams{Port: 7, Addresses: []string{"127.0.0.1"}}); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("closed: %v", err)
	}
	if err := pe.UpdateLoad(1); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("closed: %v", err)
	}
}

func TestNoRegistrar(t *testing.T) {
	timers := map[Timer]time.Duration{
		TimerT1Request: 200 * time.Millisecond, TimerT2Registration: 200 * time.Millisecond,
		TimerT3Deregistration: 200 * time.Millisecond, TimerT5ServerHunt: 100 * time.Millisecond,
		TimerRetranMax: 300 * time.Millisecond, TimerShutdown: 0,
	}
	ctx := newCtx(t, "tcp://127.0.0.1:1", timers)
	_, err := ctx.RegisterPE("go-echo", PEParams{Port: 7, Addresses: []string{"127.0.0.1"}})
	if !errors.Is(err, ErrNoRegistrar) && !errors.Is(err, ErrTimeout) {
		t.Fatalf("register: %v", err)
	}
	_, err = ctx.GetPrimaryServer("go-echo")
	if !errors.Is(err, ErrNoRegistrar) && !errors.Is(err, ErrTimeout) {
		t.Fatalf("resolve: %v", err)
	}
	if _, err := ctx.RegisterPE("go-echo", PEParams{Port: 0, Addresses: []string{"127.0.0.1"}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("port 0: %v", err)
	}
}

// Two PEs with echo servers; a PU talks to one, it dies, GetNextServer moves
// to the other and the echo still works.
func TestRegisterResolveFailover(t *testing.T) {
	url := registrar(t)
	const pool = "go-echo"
	peCtx := newCtx(t, url, fast)
	puCtx := newCtx(t, url, fast)

	servers := map[uint32]*echoServer{}
	for i := 0; i < 2; i++ {
		s := newEcho(t)
		pe, err := peCtx.RegisterPE(pool, PEParams{Port: s.port, Addresses: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := pe.Status(); err != nil || st != Registered {
			t.Fatalf("status %v %v", st, err)
		}
		servers[pe.ID] = s
	}
	if len(servers) != 2 {
		t.Fatal("the PE identifiers are not distinct")
	}

	first, err := puCtx.GetPrimaryServer(pool)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := servers[first.ID]
	if !ok || first.Transport != TCP || first.Port != s.port || first.Policy.Type != RoundRobin {
		t.Fatalf("unexpected server %+v", first)
	}
	if len(first.Addresses) != 1 || first.Addresses[0] != "127.0.0.1" || first.AddrTotal != 1 {
		t.Fatalf("addresses %v", first.Addresses)
	}
	if got := echo(t, first, "hello pool"); got != "hello pool" {
		t.Fatalf("echo %q", got)
	}

	s.stop()
	if c, err := first.Dial(deadline); err == nil {
		c.Close()
		t.Fatal("the stopped server still accepts")
	}
	other, err := puCtx.GetNextServer(pool, first.ID)
	if err != nil {
		t.Fatal(err)
	}
	if other.ID == first.ID || servers[other.ID] == nil {
		t.Fatalf("failed over to %+v", other)
	}
	if got := echo(t, other, "after failover"); got != "after failover" {
		t.Fatalf("echo %q", got)
	}
	again, err := puCtx.GetPrimaryServer(pool)
	if err != nil || again.ID != other.ID {
		t.Fatalf("the failed PE is not skipped: %+v %v", again, err)
	}
	if err := puCtx.ReportFailure(pool, first.ID); err != nil {
		t.Fatal(err)
	}

	dead := &PoolElement{ctx: peCtx, Pool: pool, ID: first.ID}
	if err := dead.Deregister(); err != nil {
		t.Fatal(err)
	}
	if err := dead.Deregister(); !errors.Is(err, ErrUnknownPE) {
		t.Fatalf("second Deregister: %v", err)
	}

	if _, err := puCtx.GetPrimaryServer("go-no-such-pool"); !errors.Is(err, ErrUnknownPool) || !errors.Is(err, ErrProtocol) {
		t.Fatalf("unknown pool: %v", err)
	}
}

func TestLeastUsedLoad(t *testing.T) {
	url := registrar(t)
	const pool = "go-lu"
	peCtx := newCtx(t, url, fast)
	puCtx := newCtx(t, url, fast)
	lu := func(load uint32) Policy { return Policy{Type: LeastUsed, Load: load} }
	a, err := peCtx.RegisterPE(pool, PEParams{Port: 7101, Addresses: []string{"127.0.0.1"}, Policy: lu(MaxLoad / 10)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := peCtx.RegisterPE(pool, PEParams{Port: 7102, Addresses: []string{"127.0.0.1"}, Policy: lu(MaxLoad / 2)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(want uint32) {
		t.Helper()
		end := time.Now().Add(deadline)
		for time.Now().Before(end) {
			if s, err := puCtx.GetPrimaryServer(pool); err == nil && s.ID == want {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("PE %#x never chosen", want)
	}
	waitFor(a.ID)
	if err := a.UpdateLoad(MaxLoad - MaxLoad/10); err != nil {
		t.Fatal(err)
	}
	waitFor(b.ID)
	if err := a.UpdatePolicy(Policy{Type: RoundRobin}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("policy type change: %v", err)
	}
	if err := b.Deregister(); err != nil {
		t.Fatal(err)
	}
	waitFor(a.ID)
}

// Closing a context under blocked calls ends them with an error, never a
// crash; every goroutine sees the close.
func TestCloseWhileBlocked(t *testing.T) {
	ctx, err := NewContext(Config{Registrars: []string{"tcp://127.0.0.1:1"}, Timers: map[Timer]time.Duration{
		TimerT1Request: 500 * time.Millisecond, TimerT5ServerHunt: 100 * time.Millisecond,
		TimerRetranMax: 300 * time.Millisecond, TimerShutdown: 0,
	}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			end := time.Now().Add(deadline)
			for time.Now().Before(end) {
				_, err := ctx.GetPrimaryServer("go-echo")
				if errors.Is(err, ErrNoRegistrar) || errors.Is(err, ErrTimeout) {
					continue
				}
				results <- err
				return
			}
			results <- errors.New("the close was never seen")
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := ctx.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	for err := range results {
		if !errors.Is(err, ErrInvalidHandle) {
			t.Fatalf("after Close: %v", err)
		}
	}
}

// echoPE serves a PEServer: every message of every session comes back
// prefixed with the PE identifier; a session that gets "bye" is closed
// without an answer.
func echoPE(t *testing.T, srv *PEServer, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		s, err := srv.Accept(100 * time.Millisecond)
		if errors.Is(err, ErrTimeout) {
			continue
		}
		if err != nil {
			return
		}
		go func() {
			defer s.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := s.Recv(100 * time.Millisecond)
				if errors.Is(err, ErrTimeout) {
					continue
				}
				if err != nil || n.Kind == NotifyClosed || string(n.Data) == "bye" {
					return
				}
				if n.Kind == NotifyData {
					reply := append([]byte(strconv.FormatUint(uint64(srv.ID), 10)+":"), n.Data...)
					if _, err := s.Send(reply, n.PPID, 0); err != nil {
						t.Errorf("echo: %v", err)
					}
				}
			}
		}()
	}
}

func readable(fd int, timeout time.Duration) bool {
	var set syscall.FdSet
	set.Bits[fd/64] |= 1 << (uint(fd) % 64)
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	n, err := syscall.Select(fd+1, &set, nil, nil, &tv)
	return err == nil && n == 1
}

// sessionContexts starts a registrar and two contexts on it with fast timers:
// one for pool elements, one for pool users (no stale cache).
func sessionContexts(t *testing.T) (peCtx, puCtx *Context) {
	url := registrar(t)
	timers := map[Timer]time.Duration{}
	for k, v := range fast {
		timers[k] = v
	}
	timers[TimerStaleCache] = 0
	peCtx, err := NewContext(Config{Registrars: []string{url}, Timers: fast})
	if err != nil {
		t.Fatal(err)
	}
	puCtx, err = NewContext(Config{Registrars: []string{url}, Timers: timers})
	if err != nil {
		peCtx.Close()
		t.Fatal(err)
	}
	return peCtx, puCtx
}

func TestSessions(t *testing.T) {
	peCtx, puCtx := sessionContexts(t)
	defer peCtx.Close()
	defer puCtx.Close()

	stop := make(chan struct{})
	var servers []*PEServer
	for i := 0; i < 2; i++ {
		srv, err := peCtx.PEListen("go-sessions", "tcp://127.0.0.1:0", Policy{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(srv.URL, "tcp://127.0.0.1:") || srv.ID == 0 {
			t.Fatalf("server %+v", srv)
		}
		servers = append(servers, srv)
		go echoPE(t, srv, stop)
	}
	defer func() {
		close(stop)
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	prefix := func(id uint32, m string) string { return strconv.FormatUint(uint64(id), 10) + ":" + m }

	s, err := puCtx.OpenSession("go-sessions", nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Recv(deadline)
	if err != nil || n.Kind != NotifyConnected {
		t.Fatalf("first notification %+v, %v", n, err)
	}
	first := n.PEID
	other := servers[0].ID
	if other == first {
		other = servers[1].ID
	}

	r, err := s.Send([]byte("hello"), 42, 0)
	if err != nil || r != (SendReceipt{Seq: 0, PEID: first}) {
		t.Fatalf("send: %+v, %v", r, err)
	}
	fd, err := s.Fd()
	if err != nil {
		t.Fatal(err)
	}
	if !readable(fd, deadline) {
		t.Fatal("the session descriptor did not become readable")
	}
	n, err = s.Recv(0)
	if err != nil || n.Kind != NotifyData || string(n.Data) != prefix(first, "hello") || n.PPID != 42 {
		t.Fatalf("echo: %+v, %v", n, err)
	}
	if readable(fd, 0) {
		t.Fatal("readable with nothing waiting")
	}
	if _, err := s.Recv(0); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("Recv(0) with nothing waiting: %v", err)
	}
	if _, err := s.Recv(50 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Recv(50ms) with nothing waiting: %v", err)
	}
	if _, err := s.Send([]byte("x"), PPIDASAP, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("PPID 11: %v", err)
	}
	if _, err := s.SendToPE(0x5151, []byte("x"), 42, 0); !errors.Is(err, ErrUnknownPE) {
		t.Fatalf("unknown PE: %v", err)
	}

	// The PE drops the session: automatic fail-over to the other one.
	if _, err := s.Send([]byte("bye"), 42, 0); err != nil {
		t.Fatal(err)
	}
	n, err = s.Recv(deadline)
	if err != nil || n.Kind != NotifyFailover || n.FromPEID != first || n.PEID != other {
		t.Fatalf("fail-over: %+v, %v", n, err)
	}
	if _, err := s.Send([]byte("again"), 42, SendFailover); err != nil {
		t.Fatal(err)
	}
	n, err = s.Recv(deadline)
	if err != nil || string(n.Data) != prefix(other, "again") {
		t.Fatalf("after the fail-over: %+v, %v", n, err)
	}
	st, err := s.Status()
	if err != nil || st.Failovers != 1 || st.PEID != other || st.State != 3 {
		t.Fatalf("status %+v, %v", st, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}

	// A transport address; a pool nobody serves.
	d, err := puCtx.OpenSessionAddr(servers[0].URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Send([]byte("direct"), 44, 0); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := d.Recv(deadline)
		if err != nil {
			t.Fatal(err)
		}
		if n.Kind == NotifyData {
			if string(n.Data) != prefix(servers[0].ID, "direct") {
				t.Fatalf("direct: %q", n.Data)
			}
			break
		}
	}
	_ = d.Close()
	if _, err := puCtx.OpenSession("go-nobody", &SessionOptions{MaxAttempts: 1, RetryInterval: 50 * time.Millisecond}); !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("unknown pool: %v", err)
	}
}

func TestBusinessCardsAndStreams(t *testing.T) {
	peCtx, puCtx := sessionContexts(t)
	defer peCtx.Close()
	defer puCtx.Close()
	var srvs []*PEServer
	for i := 0; i < 2; i++ {
		srv, err := peCtx.PEListen("go-card", "tcp://127.0.0.1:0", Policy{})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		srvs = append(srvs, srv)
	}
	own, err := puCtx.PEListen("go-pu-pool", "tcp://127.0.0.1:0", Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	ownInfo, err := own.Info()
	if err != nil || ownInfo.ID != own.ID || ownInfo.Transport != TCP {
		t.Fatalf("own info %+v, %v", ownInfo, err)
	}
	infoB, err := srvs[1].Info()
	if err != nil {
		t.Fatal(err)
	}

	s, err := puCtx.OpenSession("go-card", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, ok, err := s.BusinessCard(); ok || err != nil {
		t.Fatalf("a card before any came: %v, %v", ok, err)
	}
	var pe *Session
	for i := 0; i < 300 && pe == nil; i++ {
		for _, srv := range srvs {
			if x, err := srv.Accept(0); err == nil {
				pe = x
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pe == nil {
		t.Fatal("no PE accepted the session")
	}
	defer pe.Close()
	if err := pe.SendBusinessCard("go-card", []*ServerInfo{infoB}); err != nil {
		t.Fatal(err)
	}
	if _, err := pe.Send([]byte("card sent"), 42, Stream(5)); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := s.Recv(deadline)
		if err != nil {
			t.Fatal(err)
		}
		if n.Kind == NotifyData {
			if string(n.Data) != "card sent" || n.Stream != 5 {
				t.Fatalf("got %+v", n)
			}
			break
		}
	}
	pool, pes, ok, err := s.BusinessCard()
	if err != nil || !ok || pool != "go-card" || len(pes) != 1 || pes[0].ID != infoB.ID || pes[0].Port != infoB.Port {
		t.Fatalf("card %q %+v %v %v", pool, pes, ok, err)
	}
	if err := s.SendBusinessCard("go-pu-pool", []*ServerInfo{ownInfo}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send([]byte("hi"), 42, Stream(9)); err != nil {
		t.Fatal(err)
	}
	var kinds []NotificationKind
	for {
		n, err := pe.Recv(deadline)
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, n.Kind)
		if n.Kind == NotifyData {
			if string(n.Data) != "hi" || n.Stream != 9 {
				t.Fatalf("got %+v", n)
			}
			break
		}
	}
	if len(kinds) != 2 || kinds[0] != NotifyBusinessCard {
		t.Fatalf("PE saw %v", kinds)
	}
	pool, pes, ok, err = pe.BusinessCard()
	if err != nil || !ok || pool != "go-pu-pool" || len(pes) != 1 || pes[0].ID != own.ID {
		t.Fatalf("PU card %q %+v %v %v", pool, pes, ok, err)
	}
	if err := s.SendBusinessCard("go-pu-pool", []*ServerInfo{{ID: 1}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a hand-made ServerInfo: %v", err)
	}
}
