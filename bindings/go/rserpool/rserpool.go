// Package rserpool is the Go binding (cgo) of the rserpool C API: Reliable
// Server Pooling (RFC 5351-5356) pool elements and pool users.
//
// A Context is an ASAP endpoint with its own thread inside the library. Pool
// elements (servers) register with RegisterPE; pool users (clients) pick a
// server with GetPrimaryServer and move away from a failed one with
// GetNextServer:
//
//	ctx, err := rserpool.NewContext(rserpool.Config{Registrars: []string{"tcp://127.0.0.1:3863"}})
//	if err != nil { ... }
//	defer ctx.Close()
//	srv, err := ctx.GetPrimaryServer("echo")
//	conn, err := net.Dial("tcp", srv.Address())
//	if err != nil {
//		srv, err = ctx.GetNextServer("echo", srv.ID)
//	}
//
// Every method may be called from any goroutine. Errors from the library are
// *Error values carrying the C result code; compare them with errors.Is
// against ErrUnknownPool, ErrNoRegistrar, ErrTimeout, ...
//
// Linking: the package compiles against ../../../include/rserpool.h and links
// -lrserpool from ../../../target/debug (the repository's debug build, with
// an rpath to it). To use another build, put its directory first with
// CGO_LDFLAGS="-L/path/to/dir -Wl,-rpath,/path/to/dir" (flags from the
// environment come before the package's, so they win).
package rserpool

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: -L${SRCDIR}/../../../target/debug -Wl,-rpath,${SRCDIR}/../../../target/debug -lrserpool
#include <stdlib.h>
#include <rserpool.h>

// Handles are slot numbers, not addresses: Go keeps them as uintptr_t and
// only C turns them into pointer types, so the Go garbage collector never
// sees a made-up pointer.
static int go_config_new(uintptr_t *out) {
	rserpool_config *c = NULL;
	int rc = rserpool_config_new(&c);
	if (rc == RSERPOOL_OK) *out = (uintptr_t)c;
	return rc;
}
static int go_config_free(uintptr_t c) { return rserpool_config_free((rserpool_config *)c); }
static int go_config_add_registrar(uintptr_t c, const char *url) {
	return rserpool_config_add_registrar((rserpool_config *)c, url);
}
static int go_config_set_announce(uintptr_t c, const char *g) {
	return rserpool_config_set_announce((rserpool_config *)c, g);
}
static int go_config_set_timer(uintptr_t c, uint32_t which, uint32_t ms) {
	return rserpool_config_set_timer((rserpool_config *)c, which, ms);
}
static int go_config_set_attempts(uintptr_t c, uint32_t reg, uint32_t req) {
	return rserpool_config_set_attempts((rserpool_config *)c, reg, req);
}
static int go_config_set_reglife_unit(uintptr_t c, uint32_t unit) {
	return rserpool_config_set_reglife_unit((rserpool_config *)c, unit);
}
static int go_config_set_profile(uintptr_t c, uint32_t p) {
	return rserpool_config_set_profile((rserpool_config *)c, p);
}
static int go_context_new(uintptr_t c, uintptr_t *out) {
	rserpool_context *x = NULL;
	int rc = rserpool_context_new((const rserpool_config *)c, &x);
	if (rc == RSERPOOL_OK) *out = (uintptr_t)x;
	return rc;
}
static int go_context_free(uintptr_t x) { return rserpool_context_free((rserpool_context *)x); }
static int go_register_pe(uintptr_t x, const uint8_t *h, size_t n, const rserpool_pe_params *p,
                          uint32_t *id) {
	return rserpool_register_pe((rserpool_context *)x, h, n, p, id);
}
static int go_update_load(uintptr_t x, uint32_t id, uint32_t load) {
	return rserpool_update_load((rserpool_context *)x, id, load);
}
static int go_update_policy(uintptr_t x, uint32_t id, const rserpool_policy *p) {
	return rserpool_update_policy((rserpool_context *)x, id, p);
}
static int go_pe_status(uintptr_t x, uint32_t id, uint32_t *st) {
	return rserpool_pe_status((rserpool_context *)x, id, st);
}
static int go_deregister(uintptr_t x, uint32_t id) {
	return rserpool_deregister((rserpool_context *)x, id);
}
static int go_get_primary_server(uintptr_t x, const uint8_t *h, size_t n,
                                 rserpool_server_info *out) {
	return rserpool_get_primary_server((rserpool_context *)x, h, n, out);
}
static int go_get_next_server(uintptr_t x, const uint8_t *h, size_t n, uint32_t failed,
                              rserpool_server_info *out) {
	return rserpool_get_next_server((rserpool_context *)x, h, n, failed, out);
}
static int go_report_failure(uintptr_t x, const uint8_t *h, size_t n, uint32_t id) {
	return rserpool_report_failure((rserpool_context *)x, h, n, id);
}
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// APIVersion is the C API version this package was written for
// (major*10000 + minor*100 + patch), RSERPOOL_VERSION_NUMBER of its header.
const APIVersion = 100

// Error is a failure reported by the library: Code is the C result code (a
// negative RSERPOOL_ERR_* value), Message its description.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("rserpool: %s (code %d)", e.Message, e.Code)
}

// Is makes errors.Is(err, ErrTimeout) etc. compare codes; ErrProtocol
// matches every registrar refusal (codes -100..-199).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t == ErrProtocol {
		return e.Code <= -100 && e.Code >= -199
	}
	return t.Code == e.Code
}

func newError(code C.int) *Error {
	return &Error{Code: int(code), Message: C.GoString(C.rserpool_strerror(code))}
}

func check(code C.int) error {
	if code == C.RSERPOOL_OK {
		return nil
	}
	return newError(code)
}

func sentinel(code C.int) *Error { return newError(code) }

// Errors to compare with errors.Is.
var (
	ErrNullPointer     = sentinel(C.RSERPOOL_ERR_NULL_POINTER)
	ErrInvalidArgument = sentinel(C.RSERPOOL_ERR_INVALID_ARGUMENT)
	ErrInvalidHandle   = sentinel(C.RSERPOOL_ERR_INVALID_HANDLE)
	ErrInvalidState    = sentinel(C.RSERPOOL_ERR_INVALID_STATE)
	ErrUnknownPE       = sentinel(C.RSERPOOL_ERR_UNKNOWN_PE)
	// ErrProtocol matches any registrar refusal (-100..-199).
	ErrProtocol          = sentinel(C.RSERPOOL_ERR_PROTOCOL_UNSPECIFIED)
	ErrUnknownPool       = sentinel(C.RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE)
	ErrNoRegistrar       = sentinel(C.RSERPOOL_ERR_NO_REGISTRAR)
	ErrTimeout           = sentinel(C.RSERPOOL_ERR_TIMEOUT)
	ErrConnectionLost    = sentinel(C.RSERPOOL_ERR_CONNECTION_LOST)
	ErrNoSctp            = sentinel(C.RSERPOOL_ERR_NO_SCTP)
	ErrOS                = sentinel(C.RSERPOOL_ERR_OS)
	ErrNoUsableElement   = sentinel(C.RSERPOOL_ERR_NO_USABLE_ELEMENT)
	ErrMalformed         = sentinel(C.RSERPOOL_ERR_MALFORMED)
	ErrInternal          = sentinel(C.RSERPOOL_ERR_INTERNAL)
	errClosed            = &Error{Code: int(C.RSERPOOL_ERR_INVALID_HANDLE), Message: "the context is closed"}
	libCheckOnce         sync.Once
	libCheckErr          error
	errNoAddressProvided = &Error{Code: int(C.RSERPOOL_ERR_INVALID_ARGUMENT), Message: "no address given"}
)

// checkLibrary compares the loaded library with the header this package was
// compiled against (version and struct size), once.
func checkLibrary() error {
	libCheckOnce.Do(func() {
		if v := uint32(C.rserpool_version_number()); !compatible(v) {
			libCheckErr = fmt.Errorf("rserpool: library version %d (%s), this package was written for %d",
				v, Version(), APIVersion)
			return
		}
		if got, want := uintptr(C.rserpool_server_info_size()), unsafe.Sizeof(C.rserpool_server_info{}); got != want {
			libCheckErr = fmt.Errorf("rserpool: library's rserpool_server_info is %d bytes, the header's %d", got, want)
		}
	})
	return libCheckErr
}

func compatible(v uint32) bool {
	if C.RSERPOOL_VERSION_NUMBER != APIVersion {
		return false
	}
	major, minor := v/10000, v/100%100
	wantMajor, wantMinor := uint32(APIVersion/10000), uint32(APIVersion/100%100)
	if major != wantMajor {
		return false
	}
	if major == 0 {
		return minor == wantMinor
	}
	return minor >= wantMinor
}

// Version is the library version, e.g. "0.1.0".
func Version() string { return C.GoString(C.rserpool_version()) }

// VersionNumber is the library version as major*10000 + minor*100 + patch.
func VersionNumber() uint32 { return uint32(C.rserpool_version_number()) }

// Transport is a transport protocol (its IPPROTO number).
type Transport uint32

// Transports.
const (
	TCP     Transport = C.RSERPOOL_TRANSPORT_TCP
	UDP     Transport = C.RSERPOOL_TRANSPORT_UDP
	SCTP    Transport = C.RSERPOOL_TRANSPORT_SCTP
	UDPLite Transport = C.RSERPOOL_TRANSPORT_UDPLITE
	DCCP    Transport = C.RSERPOOL_TRANSPORT_DCCP
)

func (t Transport) String() string {
	switch t {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	case UDPLite:
		return "udplite"
	case DCCP:
		return "dccp"
	}
	return strconv.Itoa(int(t))
}

// PolicyType is a pool member selection policy (RFC 5356).
type PolicyType uint32

// Policies.
const (
	RoundRobin           PolicyType = C.RSERPOOL_POLICY_ROUND_ROBIN
	WeightedRoundRobin   PolicyType = C.RSERPOOL_POLICY_WEIGHTED_ROUND_ROBIN
	Random               PolicyType = C.RSERPOOL_POLICY_RANDOM
	WeightedRandom       PolicyType = C.RSERPOOL_POLICY_WEIGHTED_RANDOM
	Priority             PolicyType = C.RSERPOOL_POLICY_PRIORITY
	LeastUsed            PolicyType = C.RSERPOOL_POLICY_LEAST_USED
	LeastUsedDegradation PolicyType = C.RSERPOOL_POLICY_LEAST_USED_DEGRADATION
	PriorityLeastUsed    PolicyType = C.RSERPOOL_POLICY_PRIORITY_LEAST_USED
	RandomizedLeastUsed  PolicyType = C.RSERPOOL_POLICY_RANDOMIZED_LEAST_USED
)

// MaxLoad is a full load (Policy.Load, Policy.Degradation, UpdateLoad).
const MaxLoad uint32 = 0xFFFFFFFF

// Policy is a policy and its values; only those the type uses matter. Load
// and Degradation are fractions of MaxLoad (0 idle, MaxLoad full).
type Policy struct {
	Type        PolicyType
	Weight      uint32
	Priority    uint32
	Load        uint32
	Degradation uint32
}

func (p Policy) c() C.rserpool_policy {
	return C.rserpool_policy{
		policy_type: C.uint32_t(p.Type),
		weight:      C.uint32_t(p.Weight),
		priority:    C.uint32_t(p.Priority),
		load:        C.uint32_t(p.Load),
		degradation: C.uint32_t(p.Degradation),
	}
}

func policyFromC(p C.rserpool_policy) Policy {
	return Policy{
		Type:        PolicyType(p.policy_type),
		Weight:      uint32(p.weight),
		Priority:    uint32(p.priority),
		Load:        uint32(p.load),
		Degradation: uint32(p.degradation),
	}
}

// Timer names a configurable timer.
type Timer uint32

// Timers (see include/rserpool.h for their meaning and defaults).
const (
	TimerT1Request          Timer = C.RSERPOOL_TIMER_T1_REQUEST
	TimerT2Registration     Timer = C.RSERPOOL_TIMER_T2_REGISTRATION
	TimerT3Deregistration   Timer = C.RSERPOOL_TIMER_T3_DEREGISTRATION
	TimerT4Reregistration   Timer = C.RSERPOOL_TIMER_T4_REREGISTRATION
	TimerT5ServerHunt       Timer = C.RSERPOOL_TIMER_T5_SERVER_HUNT
	TimerT7Outdate          Timer = C.RSERPOOL_TIMER_T7_OUTDATE
	TimerStaleCache         Timer = C.RSERPOOL_TIMER_STALE_CACHE
	TimerRetranMax          Timer = C.RSERPOOL_TIMER_RETRAN_MAX
	TimerUnreachableHoldoff Timer = C.RSERPOOL_TIMER_UNREACHABLE_HOLDOFF
	TimerShutdown           Timer = C.RSERPOOL_TIMER_SHUTDOWN
)

// Profile selects a set of timer values.
type Profile uint32

// Profiles.
const (
	ProfileRFC    Profile = C.RSERPOOL_PROFILE_RFC
	ProfileRSPLIB Profile = C.RSERPOOL_PROFILE_RSPLIB
)

// ReglifeUnit is the unit of PEParams.RegLife.
type ReglifeUnit uint32

// Units.
const (
	ReglifeSeconds      ReglifeUnit = C.RSERPOOL_REGLIFE_SECONDS
	ReglifeMilliseconds ReglifeUnit = C.RSERPOOL_REGLIFE_MILLISECONDS
)

// Config is what NewContext needs. The zero value of each field keeps the
// library default.
type Config struct {
	// Registrars: "tcp://HOST:PORT" or "sctp://HOST[,HOST...]:PORT", tried in order.
	Registrars []string
	// Profile is applied before the other settings (default ProfileRFC).
	Profile Profile
	// Timers overrides single timers (millisecond resolution).
	Timers map[Timer]time.Duration
	// ReglifeUnit must match the registrar's (default seconds).
	ReglifeUnit ReglifeUnit
	// Announce: "GROUP:PORT" to learn registrars from announces ("" = off).
	Announce string
	// MaxRegAttempt and MaxRequestRetransmit: 0 keeps the default (2).
	MaxRegAttempt, MaxRequestRetransmit uint32
}

func (cfg *Config) build() (C.uintptr_t, error) {
	var h C.uintptr_t
	if err := check(C.go_config_new(&h)); err != nil {
		return 0, err
	}
	err := func() error {
		if err := check(C.go_config_set_profile(h, C.uint32_t(cfg.Profile))); err != nil {
			return err
		}
		for _, url := range cfg.Registrars {
			s := C.CString(url)
			rc := C.go_config_add_registrar(h, s)
			C.free(unsafe.Pointer(s))
			if err := check(rc); err != nil {
				return fmt.Errorf("registrar %q: %w", url, err)
			}
		}
		if cfg.Announce != "" {
			s := C.CString(cfg.Announce)
			rc := C.go_config_set_announce(h, s)
			C.free(unsafe.Pointer(s))
			if err := check(rc); err != nil {
				return err
			}
		}
		for t, d := range cfg.Timers {
			ms := d.Milliseconds()
			if ms < 0 || ms > 0xFFFFFFFF {
				return &Error{Code: int(C.RSERPOOL_ERR_INVALID_ARGUMENT), Message: "timer out of range"}
			}
			if err := check(C.go_config_set_timer(h, C.uint32_t(t), C.uint32_t(ms))); err != nil {
				return fmt.Errorf("timer %d: %w", t, err)
			}
		}
		if err := check(C.go_config_set_reglife_unit(h, C.uint32_t(cfg.ReglifeUnit))); err != nil {
			return err
		}
		if cfg.MaxRegAttempt != 0 || cfg.MaxRequestRetransmit != 0 {
			reg, req := cfg.MaxRegAttempt, cfg.MaxRequestRetransmit
			if reg == 0 {
				reg = 2
			}
			if req == 0 {
				req = 2
			}
			return check(C.go_config_set_attempts(h, C.uint32_t(reg), C.uint32_t(req)))
		}
		return nil
	}()
	if err != nil {
		C.go_config_free(h)
		return 0, err
	}
	return h, nil
}

// Context is an ASAP endpoint (its pool elements and pool user) with a
// thread of its own inside the library. Close it when done.
type Context struct {
	h atomic.Uintptr
}

// NewContext starts an endpoint. The registrars are contacted when something
// needs one (registration, resolution).
func NewContext(cfg Config) (*Context, error) {
	if err := checkLibrary(); err != nil {
		return nil, err
	}
	ch, err := cfg.build()
	if err != nil {
		return nil, err
	}
	defer C.go_config_free(ch)
	var h C.uintptr_t
	if err := check(C.go_context_new(ch, &h)); err != nil {
		return nil, err
	}
	c := &Context{}
	c.h.Store(uintptr(h))
	return c, nil
}

func (c *Context) handle() (C.uintptr_t, error) {
	h := c.h.Load()
	if h == 0 {
		return 0, errClosed
	}
	return C.uintptr_t(h), nil
}

// Close deregisters the PEs still registered (waiting at most the shutdown
// timer) and stops the endpoint. Closing twice is allowed. Calls made after
// Close fail with an error matching ErrInvalidHandle.
func (c *Context) Close() error {
	h := c.h.Swap(0)
	if h == 0 {
		return nil
	}
	return check(C.go_context_free(C.uintptr_t(h)))
}

// PEParams describes a pool element to register.
type PEParams struct {
	// Transport defaults to TCP.
	Transport Transport
	// Port pool users connect to (required).
	Port uint16
	// Addresses: concrete numeric addresses (SCTP: one or more, others: one).
	Addresses []string
	// ControlChannel: data plus control instead of data only.
	ControlChannel bool
	// Policy: the zero value means Round Robin.
	Policy Policy
	// RegLife in the configured unit; 0 keeps the default (60), -1 = infinite.
	RegLife int32
	// ID: a fixed PE identifier; 0 = random.
	ID uint32
}

// PoolElement is a registered pool element.
type PoolElement struct {
	ctx  *Context
	Pool string
	ID   uint32
}

func poolBytes(pool string) (*C.uint8_t, C.size_t) {
	if len(pool) == 0 {
		return nil, 0
	}
	b := []byte(pool)
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// RegisterPE registers a pool element under pool and waits until the
// registrar granted it; the library then keeps it registered until
// Deregister or Close.
func (c *Context) RegisterPE(pool string, p PEParams) (*PoolElement, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	if len(p.Addresses) == 0 {
		return nil, errNoAddressProvided
	}
	var params C.rserpool_pe_params
	if err := check(C.rserpool_pe_params_init(&params)); err != nil {
		return nil, err
	}
	// The address array goes to C, so it and its strings live in C memory.
	n := len(p.Addresses)
	arr := (*[1 << 20]*C.char)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))[:n:n]
	for i, a := range p.Addresses {
		arr[i] = C.CString(a)
	}
	defer func() {
		for _, s := range arr {
			C.free(unsafe.Pointer(s))
		}
		C.free(unsafe.Pointer(&arr[0]))
	}()
	if p.Transport != 0 {
		params.protocol = C.uint32_t(p.Transport)
	}
	params.port = C.uint16_t(p.Port)
	if p.ControlChannel {
		params.transport_use = C.RSERPOOL_TRANSPORT_USE_DATA_PLUS_CONTROL
	}
	params.addrs = &arr[0]
	params.addr_count = C.size_t(n)
	pol := p.Policy
	if pol.Type == 0 {
		pol.Type = RoundRobin
	}
	params.policy = pol.c()
	if p.RegLife != 0 {
		params.reg_life = C.int32_t(p.RegLife)
	}
	params.pe_id = C.uint32_t(p.ID)
	ph, hl := poolBytes(pool)
	var id C.uint32_t
	if err := check(C.go_register_pe(h, ph, hl, &params, &id)); err != nil {
		return nil, err
	}
	return &PoolElement{ctx: c, Pool: pool, ID: uint32(id)}, nil
}

// UpdateLoad sets the load (Least Used policies; a fraction of MaxLoad) and
// re-registers at once.
func (pe *PoolElement) UpdateLoad(load uint32) error {
	h, err := pe.ctx.handle()
	if err != nil {
		return err
	}
	return check(C.go_update_load(h, C.uint32_t(pe.ID), C.uint32_t(load)))
}

// UpdatePolicy replaces the policy values (same type) and re-registers at once.
func (pe *PoolElement) UpdatePolicy(p Policy) error {
	h, err := pe.ctx.handle()
	if err != nil {
		return err
	}
	cp := p.c()
	return check(C.go_update_policy(h, C.uint32_t(pe.ID), &cp))
}

// PEStatus is where a pool element stands.
type PEStatus uint32

// Statuses.
const (
	Registering   PEStatus = C.RSERPOOL_PE_REGISTERING
	Registered    PEStatus = C.RSERPOOL_PE_REGISTERED
	Lost          PEStatus = C.RSERPOOL_PE_LOST
	Deregistering PEStatus = C.RSERPOOL_PE_DEREGISTERING
)

func (s PEStatus) String() string {
	switch s {
	case Registering:
		return "registering"
	case Registered:
		return "registered"
	case Lost:
		return "lost"
	case Deregistering:
		return "deregistering"
	}
	return strconv.Itoa(int(s))
}

// Status tells whether the PE is registered.
func (pe *PoolElement) Status() (PEStatus, error) {
	h, err := pe.ctx.handle()
	if err != nil {
		return 0, err
	}
	var st C.uint32_t
	if err := check(C.go_pe_status(h, C.uint32_t(pe.ID), &st)); err != nil {
		return 0, err
	}
	return PEStatus(st), nil
}

// Deregister deregisters the PE and waits for the registrar's answer. The PE
// is forgotten whatever the result (a second call gives ErrUnknownPE).
func (pe *PoolElement) Deregister() error {
	h, err := pe.ctx.handle()
	if err != nil {
		return err
	}
	return check(C.go_deregister(h, C.uint32_t(pe.ID)))
}

// ServerInfo is the pool element a pool user should use.
type ServerInfo struct {
	ID             uint32
	Transport      Transport
	Port           uint16
	ControlChannel bool
	Policy         Policy
	// Addresses as text ("192.0.2.1", "2001:db8::1"), in the PE's order.
	Addresses []string
	// AddrTotal is how many addresses the PE has (may exceed len(Addresses)).
	AddrTotal int
	// The C form it came from, for business cards.
	raw    C.rserpool_server_info
	hasRaw bool
}

// Address is "host:port" of the first address, for net.Dial.
func (s *ServerInfo) Address() string {
	if len(s.Addresses) == 0 {
		return ""
	}
	return net.JoinHostPort(s.Addresses[0], strconv.Itoa(int(s.Port)))
}

// Dial connects over TCP to the first address that answers.
func (s *ServerInfo) Dial(timeout time.Duration) (net.Conn, error) {
	if s.Transport != TCP {
		return nil, fmt.Errorf("rserpool: Dial handles TCP only, not %v", s.Transport)
	}
	var last error = errors.New("rserpool: the server has no address")
	for _, a := range s.Addresses {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(a, strconv.Itoa(int(s.Port))), timeout)
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

func serverFromC(s *C.rserpool_server_info) *ServerInfo {
	n := int(s.addr_count)
	if n > C.RSERPOOL_MAX_ADDRS {
		n = C.RSERPOOL_MAX_ADDRS
	}
	info := &ServerInfo{
		ID:             uint32(s.pe_id),
		Transport:      Transport(s.protocol),
		Port:           uint16(s.port),
		ControlChannel: s.transport_use == C.RSERPOOL_TRANSPORT_USE_DATA_PLUS_CONTROL,
		Policy:         policyFromC(s.policy),
		AddrTotal:      int(s.addr_total),
		raw:            *s,
		hasRaw:         true,
	}
	for i := 0; i < n; i++ {
		info.Addresses = append(info.Addresses, C.GoString(&s.addrs[i].text[0]))
	}
	return info
}

// GetPrimaryServer picks a pool element of pool by the pool's policy (from
// the cache when fresh, else asking the registrar).
func (c *Context) GetPrimaryServer(pool string) (*ServerInfo, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	ph, hl := poolBytes(pool)
	var out C.rserpool_server_info
	if err := check(C.go_get_primary_server(h, ph, hl, &out)); err != nil {
		return nil, err
	}
	return serverFromC(&out), nil
}

// GetNextServer reports failed unreachable and picks the next pool element.
func (c *Context) GetNextServer(pool string, failed uint32) (*ServerInfo, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	ph, hl := poolBytes(pool)
	var out C.rserpool_server_info
	if err := check(C.go_get_next_server(h, ph, hl, C.uint32_t(failed), &out)); err != nil {
		return nil, err
	}
	return serverFromC(&out), nil
}

// ReportFailure reports a pool element unreachable without asking for
// another; it does not wait.
func (c *Context) ReportFailure(pool string, id uint32) error {
	h, err := c.handle()
	if err != nil {
		return err
	}
	ph, hl := poolBytes(pool)
	return check(C.go_report_failure(h, ph, hl, C.uint32_t(id)))
}

// PPIDs of Decode.
const (
	PPIDASAP = C.RSERPOOL_PPID_ASAP
	PPIDENRP = C.RSERPOOL_PPID_ENRP
)

// Decode renders one ASAP (ppid 11) or ENRP (ppid 12) message as the
// library's JSON, parsed into a map.
func Decode(msg []byte, ppid uint32) (map[string]any, error) {
	if err := checkLibrary(); err != nil {
		return nil, err
	}
	var empty [1]byte
	src := (*C.uint8_t)(unsafe.Pointer(&empty[0]))
	if len(msg) > 0 {
		src = (*C.uint8_t)(unsafe.Pointer(&msg[0]))
	}
	var need, off C.size_t
	rc := C.rserpool_decode_json(src, C.size_t(len(msg)), C.uint32_t(ppid), nil, 0, &need, &off)
	for rc == C.RSERPOOL_ERR_BUFFER_TOO_SMALL {
		buf := make([]byte, int(need))
		var length C.size_t
		rc = C.rserpool_decode_json(src, C.size_t(len(msg)), C.uint32_t(ppid),
			(*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &length, &off)
		if rc == C.RSERPOOL_OK {
			var m map[string]any
			if err := json.Unmarshal(buf[:int(length)], &m); err != nil {
				return nil, err
			}
			return m, nil
		}
		need = length
	}
	if rc == C.RSERPOOL_ERR_MALFORMED {
		e := newError(rc)
		e.Message = fmt.Sprintf("%s at byte %d", e.Message, int(off))
		return nil, e
	}
	if err := check(rc); err != nil {
		return nil, err
	}
	return nil, ErrInternal
}
