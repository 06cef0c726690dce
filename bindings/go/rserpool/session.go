package rserpool

/*
#include <stdlib.h>
#include <rserpool.h>

// Handles stay uintptr_t on the Go side (see rserpool.go).
static int go_session_open(uintptr_t x, const uint8_t *h, size_t n,
                           const rserpool_session_params *p, uintptr_t *out) {
	rserpool_session *s = NULL;
	int rc = rserpool_session_open((rserpool_context *)x, h, n, p, &s);
	if (rc == RSERPOOL_OK) *out = (uintptr_t)s;
	return rc;
}
static int go_session_open_addr(uintptr_t x, const char *url, const rserpool_session_params *p,
                                uintptr_t *out) {
	rserpool_session *s = NULL;
	int rc = rserpool_session_open_addr((rserpool_context *)x, url, p, &s);
	if (rc == RSERPOOL_OK) *out = (uintptr_t)s;
	return rc;
}
static int go_data_send(uintptr_t s, const rserpool_dest *d, const uint8_t *b, size_t n,
                        uint32_t ppid, uint32_t flags, uint32_t *pe, uint64_t *seq) {
	return rserpool_data_send((rserpool_session *)s, d, b, n, ppid, flags, pe, seq);
}
static int go_recv(uintptr_t s, rserpool_notification *n, uint8_t *b, size_t cap, int ms) {
	return rserpool_recv((rserpool_session *)s, n, b, cap, ms);
}
static int go_session_fd(uintptr_t s, int *fd) {
	return rserpool_session_fd((rserpool_session *)s, fd);
}
static int go_session_failover_now(uintptr_t s) {
	return rserpool_session_failover_now((rserpool_session *)s);
}
static int go_session_cookie(uintptr_t s, uint8_t *b, size_t cap, size_t *len) {
	return rserpool_session_cookie((rserpool_session *)s, b, cap, len);
}
static int go_session_get_status(uintptr_t s, rserpool_session_status *st) {
	return rserpool_session_get_status((rserpool_session *)s, st);
}
static int go_session_close(uintptr_t s) { return rserpool_session_close((rserpool_session *)s); }
static int go_send_cookie(uintptr_t s, const uint8_t *b, size_t n) {
	return rserpool_send_cookie((rserpool_session *)s, b, n);
}
static int go_pe_listen(uintptr_t x, const rserpool_pe_listen_params *p, uintptr_t *out) {
	rserpool_pe_server *s = NULL;
	int rc = rserpool_pe_listen((rserpool_context *)x, p, &s);
	if (rc == RSERPOOL_OK) *out = (uintptr_t)s;
	return rc;
}
static int go_pe_server_pe_id(uintptr_t s, uint32_t *id) {
	return rserpool_pe_server_pe_id((rserpool_pe_server *)s, id);
}
static int go_pe_server_local_url(uintptr_t s, char *b, size_t cap, size_t *len) {
	return rserpool_pe_server_local_url((rserpool_pe_server *)s, b, cap, len);
}
static int go_pe_server_fd(uintptr_t s, int *fd) {
	return rserpool_pe_server_fd((rserpool_pe_server *)s, fd);
}
static int go_pe_accept(uintptr_t s, int ms, uintptr_t *out) {
	rserpool_session *x = NULL;
	int rc = rserpool_pe_accept((rserpool_pe_server *)s, ms, &x);
	if (rc == RSERPOOL_OK) *out = (uintptr_t)x;
	return rc;
}
static int go_pe_server_close(uintptr_t s) {
	return rserpool_pe_server_close((rserpool_pe_server *)s);
}
*/
import "C"

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// MaxMessageLen is the longest message a session sends.
const MaxMessageLen = C.RSERPOOL_MAX_MESSAGE_LEN

// Errors of sessions, to compare with errors.Is.
var (
	ErrBufferTooSmall = sentinel(C.RSERPOOL_ERR_BUFFER_TOO_SMALL)
	ErrWouldDeadlock  = sentinel(C.RSERPOOL_ERR_WOULD_DEADLOCK)
	ErrWouldBlock     = sentinel(C.RSERPOOL_ERR_WOULD_BLOCK)
	ErrClosed         = sentinel(C.RSERPOOL_ERR_CLOSED)
	errSessionClosed  = &Error{Code: int(C.RSERPOOL_ERR_CLOSED), Message: "the session is closed"}
)

// SessionOptions tunes a pool user session; the zero value is the library's
// defaults (automatic fail-over, upper-layer acknowledgements, open waits
// until connected).
type SessionOptions struct {
	// NonBlocking: OpenSession returns at once; Recv reports NotifyConnected.
	NonBlocking bool
	// OpenTimeout bounds a blocking open (0: until connected or given up).
	OpenTimeout time.Duration
	// NoAutoFailover: report NotifyPeerFailed and wait for FailoverNow.
	NoAutoFailover bool
	// NoUpperLayerAcks: forget a message once written (nothing is re-sent).
	NoUpperLayerAcks bool
	// AckEvents: report every acknowledged message (NotifyAcked).
	AckEvents bool
	// ConnectTimeout, RetryInterval, MaxAttempts, MaxBuffered,
	// MaxBufferedBytes: 0 keeps the default (5 s, 1 s, 5, 1024, 4 MiB).
	ConnectTimeout   time.Duration
	RetryInterval    time.Duration
	MaxAttempts      uint32
	MaxBuffered      int
	MaxBufferedBytes int
}

func millis(d time.Duration) C.uint32_t {
	ms := d.Milliseconds()
	if ms > 0xFFFFFFFF {
		ms = 0xFFFFFFFF
	}
	return C.uint32_t(ms)
}

func (o *SessionOptions) params() (C.rserpool_session_params, error) {
	var p C.rserpool_session_params
	if err := check(C.rserpool_session_params_init(&p)); err != nil {
		return p, err
	}
	if o == nil {
		return p, nil
	}
	b := func(v bool) C.uint32_t {
		if v {
			return 1
		}
		return 0
	}
	p.nonblock = b(o.NonBlocking)
	p.open_timeout_ms = millis(o.OpenTimeout)
	p.auto_failover = b(!o.NoAutoFailover)
	p.upper_layer_acks = b(!o.NoUpperLayerAcks)
	p.ack_events = b(o.AckEvents)
	if o.ConnectTimeout > 0 {
		p.connect_timeout_ms = millis(o.ConnectTimeout)
	}
	if o.RetryInterval > 0 {
		p.retry_interval_ms = millis(o.RetryInterval)
	}
	if o.MaxAttempts > 0 {
		p.max_attempts = C.uint32_t(o.MaxAttempts)
	}
	if o.MaxBuffered > 0 {
		p.max_buffered = C.size_t(o.MaxBuffered)
	}
	if o.MaxBufferedBytes > 0 {
		p.max_buffered_bytes = C.size_t(o.MaxBufferedBytes)
	}
	return p, nil
}

// Session is an enhanced-mode session: a pool user's (OpenSession) or a pool
// element's (PEServer.Accept). Methods may be called from any goroutine.
type Session struct {
	h   atomic.Uintptr
	mu  sync.Mutex // the receive buffer
	buf []byte
}

func newSession(h C.uintptr_t) *Session {
	s := &Session{buf: make([]byte, MaxMessageLen)}
	s.h.Store(uintptr(h))
	return s
}

func (s *Session) handle() (C.uintptr_t, error) {
	h := s.h.Load()
	if h == 0 {
		return 0, errSessionClosed
	}
	return C.uintptr_t(h), nil
}

// OpenSession opens a session to pool: the library picks a pool element,
// connects, and fails over when it fails. opts may be nil.
func (c *Context) OpenSession(pool string, opts *SessionOptions) (*Session, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	p, err := opts.params()
	if err != nil {
		return nil, err
	}
	ph, hl := poolBytes(pool)
	var out C.uintptr_t
	if err := check(C.go_session_open(h, ph, hl, &p, &out)); err != nil {
		return nil, err
	}
	return newSession(out), nil
}

// OpenSessionAddr opens a session to the pool element at a transport address
// ("tcp://ADDR:PORT"); with failoverPool != "" it fails over into that pool.
func (c *Context) OpenSessionAddr(url, failoverPool string, opts *SessionOptions) (*Session, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	p, err := opts.params()
	if err != nil {
		return nil, err
	}
	if failoverPool != "" {
		fp := C.CBytes([]byte(failoverPool))
		defer C.free(fp)
		p.failover_pool = (*C.uint8_t)(fp)
		p.failover_pool_len = C.size_t(len(failoverPool))
	}
	cu := C.CString(url)
	defer C.free(unsafe.Pointer(cu))
	var out C.uintptr_t
	if err := check(C.go_session_open_addr(h, cu, &p, &out)); err != nil {
		return nil, err
	}
	return newSession(out), nil
}

// SendFlags of Send (RFC 5352 §6.5.5).
type SendFlags uint32

// Send flags.
const (
	// SendFailover: fail over if the PE fails while this message is buffered.
	SendFailover SendFlags = C.RSERPOOL_SEND_FAILOVER
	// SendNoFailover: report the failure instead.
	SendNoFailover SendFlags = C.RSERPOOL_SEND_NO_FAILOVER
	// SendUnordered: unordered delivery.
	SendUnordered SendFlags = C.RSERPOOL_SEND_UNORDERED
)

// SendReceipt says where a message went: its sequence number in the session
// and the PE it is addressed to (0 while none is chosen yet).
type SendReceipt struct {
	Seq  uint64
	PEID uint32
}

func (s *Session) send(dest *C.rserpool_dest, data []byte, ppid uint32, flags SendFlags) (SendReceipt, error) {
	h, err := s.handle()
	if err != nil {
		return SendReceipt{}, err
	}
	var ptr *C.uint8_t
	if len(data) > 0 {
		ptr = (*C.uint8_t)(unsafe.Pointer(&data[0]))
	}
	var pe C.uint32_t
	var seq C.uint64_t
	if err := check(C.go_data_send(h, dest, ptr, C.size_t(len(data)), C.uint32_t(ppid),
		C.uint32_t(flags), &pe, &seq)); err != nil {
		return SendReceipt{}, err
	}
	return SendReceipt{Seq: uint64(seq), PEID: uint32(pe)}, nil
}

// Send queues a message (never waits): a pool user's to its pool, a pool
// element's to its pool user. PPID 11 is refused (ErrInvalidArgument); a
// full buffer gives ErrWouldBlock.
func (s *Session) Send(data []byte, ppid uint32, flags SendFlags) (SendReceipt, error) {
	return s.send(nil, data, ppid, flags)
}

// SendToPE queues a message for one pool element of the session's pool,
// moving the session there if it is on another one.
func (s *Session) SendToPE(peID uint32, data []byte, ppid uint32, flags SendFlags) (SendReceipt, error) {
	d := C.rserpool_dest{kind: C.RSERPOOL_DEST_PE, pe_id: C.uint32_t(peID)}
	return s.send(&d, data, ppid, flags)
}

// NotificationKind says what a Notification is.
type NotificationKind uint32

// Notification kinds (see include/rserpool.h).
const (
	NotifyData         NotificationKind = C.RSERPOOL_NOTIFY_DATA
	NotifyConnected    NotificationKind = C.RSERPOOL_NOTIFY_CONNECTED
	NotifyFailover     NotificationKind = C.RSERPOOL_NOTIFY_FAILOVER
	NotifyPeerFailed   NotificationKind = C.RSERPOOL_NOTIFY_PEER_FAILED
	NotifyFailed       NotificationKind = C.RSERPOOL_NOTIFY_FAILED
	NotifyAcked        NotificationKind = C.RSERPOOL_NOTIFY_ACKED
	NotifyCookieEcho   NotificationKind = C.RSERPOOL_NOTIFY_COOKIE_ECHO
	NotifyBusinessCard NotificationKind = C.RSERPOOL_NOTIFY_BUSINESS_CARD
	NotifyClosed       NotificationKind = C.RSERPOOL_NOTIFY_CLOSED
)

// Notification is what Recv received; which fields are set depends on Kind.
type Notification struct {
	Kind     NotificationKind
	Data     []byte // NotifyData, NotifyCookieEcho, NotifyBusinessCard (the pool handle)
	PPID     uint32
	Stream   uint16
	PEID     uint32   // connected, peer failed, fail-over (the new PE)
	FromPEID uint32   // fail-over
	Seq      uint64   // acked
	Resent   []uint64 // fail-over: sequence numbers re-sent to the new PE
	Error    int      // failed: an RSERPOOL_ERR_* code
	Count    int      // failed: attempts; business card: PEs
}

// hostOrder is the byte order of the sequence numbers of a fail-over.
var hostOrder binary.ByteOrder = func() binary.ByteOrder {
	x := uint16(1)
	if *(*byte)(unsafe.Pointer(&x)) == 1 {
		return binary.LittleEndian
	}
	return binary.BigEndian
}()

func timeoutMs(d time.Duration) C.int {
	switch {
	case d < 0:
		return -1
	case d == 0:
		return 0
	}
	ms := (d + time.Millisecond - 1).Milliseconds()
	if ms > 0x7FFFFFFF {
		ms = 0x7FFFFFFF
	}
	return C.int(ms)
}

// Recv returns the next notification, waiting at most timeout (negative: no
// bound; 0: not at all). Nothing in time: an error matching ErrTimeout (or
// ErrWouldBlock for 0); after NotifyClosed: ErrClosed.
func (s *Session) Recv(timeout time.Duration) (*Notification, error) {
	h, err := s.handle()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var n C.rserpool_notification
	buf := s.buf
	rc := C.go_recv(h, &n, (*C.uint8_t)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), timeoutMs(timeout))
	for rc == C.RSERPOOL_ERR_BUFFER_TOO_SMALL {
		buf = make([]byte, int(n.len))
		rc = C.go_recv(h, &n, (*C.uint8_t)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), 0)
	}
	if err := check(rc); err != nil {
		return nil, err
	}
	raw := append([]byte(nil), buf[:int(n.len)]...)
	out := &Notification{
		Kind:     NotificationKind(n.kind),
		PPID:     uint32(n.ppid),
		Stream:   uint16(n.stream),
		PEID:     uint32(n.pe_id),
		FromPEID: uint32(n.from_pe_id),
		Seq:      uint64(n.seq),
		Error:    int(n.error),
		Count:    int(n.count),
	}
	if out.Kind == NotifyFailover {
		for i := 0; i+8 <= len(raw); i += 8 {
			out.Resent = append(out.Resent, hostOrder.Uint64(raw[i:]))
		}
	} else {
		out.Data = raw
	}
	return out, nil
}

// Fd is a descriptor readable while a notification waits (for poll/select;
// owned by the session: do not close it).
func (s *Session) Fd() (int, error) {
	h, err := s.handle()
	if err != nil {
		return -1, err
	}
	var fd C.int
	if err := check(C.go_session_fd(h, &fd)); err != nil {
		return -1, err
	}
	return int(fd), nil
}

// FailoverNow fails over after NotifyPeerFailed.
func (s *Session) FailoverNow() error {
	h, err := s.handle()
	if err != nil {
		return err
	}
	return check(C.go_session_failover_now(h))
}

// Cookie is the latest cookie the pool elements sent (nil if none).
func (s *Session) Cookie() ([]byte, error) {
	h, err := s.handle()
	if err != nil {
		return nil, err
	}
	var need C.size_t
	rc := C.go_session_cookie(h, nil, 0, &need)
	for rc == C.RSERPOOL_ERR_BUFFER_TOO_SMALL {
		b := make([]byte, int(need))
		rc = C.go_session_cookie(h, (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b)), &need)
		if rc == C.RSERPOOL_OK {
			return b[:int(need)], nil
		}
	}
	return nil, check(rc)
}

// SessionStatus is where a pool user session stands.
type SessionStatus struct {
	State                                                    uint32 // 1 selecting, 2 connecting, 3 up, 4 peer failed, 5 closed
	PEID                                                     uint32
	Buffered                                                 int
	Sent, Resent, Acked, Failovers, ConnectAttempts, Cookies uint64
}

// Status reads a pool user session's state and counters.
func (s *Session) Status() (SessionStatus, error) {
	h, err := s.handle()
	if err != nil {
		return SessionStatus{}, err
	}
	var st C.rserpool_session_status
	if err := check(C.go_session_get_status(h, &st)); err != nil {
		return SessionStatus{}, err
	}
	return SessionStatus{
		State: uint32(st.state), PEID: uint32(st.pe_id), Buffered: int(st.buffered),
		Sent: uint64(st.sent), Resent: uint64(st.resent), Acked: uint64(st.acked),
		Failovers: uint64(st.failovers), ConnectAttempts: uint64(st.connect_attempts),
		Cookies: uint64(st.cookies),
	}, nil
}

// SendCookie (pool element sessions) hands the pool user state to echo to
// the next pool element after a fail-over.
func (s *Session) SendCookie(cookie []byte) error {
	h, err := s.handle()
	if err != nil {
		return err
	}
	var ptr *C.uint8_t
	if len(cookie) > 0 {
		ptr = (*C.uint8_t)(unsafe.Pointer(&cookie[0]))
	}
	return check(C.go_send_cookie(h, ptr, C.size_t(len(cookie))))
}

// Close closes the session gracefully (what is buffered still goes out).
// Closing twice is allowed.
func (s *Session) Close() error {
	h := s.h.Swap(0)
	if h == 0 {
		return nil
	}
	return check(C.go_session_close(C.uintptr_t(h)))
}

// PEServer is a registered pool element accepting pool users' sessions.
type PEServer struct {
	h atomic.Uintptr
	// ID is the PE identifier it is registered under.
	ID uint32
	// URL is where it listens (the kernel's port if the URL said 0).
	URL string
}

// PEListen listens at url ("tcp://127.0.0.1:0": an ephemeral port) and
// registers a pool element of pool there; the zero Policy is Round Robin.
func (c *Context) PEListen(pool, url string, policy Policy) (*PEServer, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	var p C.rserpool_pe_listen_params
	if err := check(C.rserpool_pe_listen_params_init(&p)); err != nil {
		return nil, err
	}
	ph := C.CBytes([]byte(pool))
	defer C.free(ph)
	cu := C.CString(url)
	defer C.free(unsafe.Pointer(cu))
	p.pool_handle = (*C.uint8_t)(ph)
	p.handle_len = C.size_t(len(pool))
	p.listen_url = cu
	if policy.Type == 0 {
		policy.Type = RoundRobin
	}
	p.policy = policy.c()
	var out C.uintptr_t
	if err := check(C.go_pe_listen(h, &p, &out)); err != nil {
		return nil, err
	}
	srv := &PEServer{}
	srv.h.Store(uintptr(out))
	var id C.uint32_t
	_ = C.go_pe_server_pe_id(out, &id)
	srv.ID = uint32(id)
	var b [256]C.char
	var n C.size_t
	if C.go_pe_server_local_url(out, &b[0], C.size_t(len(b)), &n) == C.RSERPOOL_OK {
		srv.URL = C.GoString(&b[0])
	}
	return srv, nil
}

func (p *PEServer) handle() (C.uintptr_t, error) {
	h := p.h.Load()
	if h == 0 {
		return 0, errSessionClosed
	}
	return C.uintptr_t(h), nil
}

// Fd is a descriptor readable while a session waits to be accepted.
func (p *PEServer) Fd() (int, error) {
	h, err := p.handle()
	if err != nil {
		return -1, err
	}
	var fd C.int
	if err := check(C.go_pe_server_fd(h, &fd)); err != nil {
		return -1, err
	}
	return int(fd), nil
}

// Accept returns the next pool user's session, waiting at most timeout
// (negative: no bound). Nothing in time: ErrTimeout (ErrWouldBlock for 0);
// closed meanwhile: ErrClosed.
func (p *PEServer) Accept(timeout time.Duration) (*Session, error) {
	h, err := p.handle()
	if err != nil {
		return nil, err
	}
	var out C.uintptr_t
	if err := check(C.go_pe_accept(h, timeoutMs(timeout), &out)); err != nil {
		return nil, err
	}
	return newSession(out), nil
}

// Close deregisters the pool element and stops listening. Closing twice is
// allowed.
func (p *PEServer) Close() error {
	h := p.h.Swap(0)
	if h == 0 {
		return nil
	}
	return check(C.go_pe_server_close(C.uintptr_t(h)))
}
