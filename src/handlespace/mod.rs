//! The handlespace: pools, pool elements and selection policies (RFC 5356), and the
//! ENRP PE checksum (RFC 5353 §3.6.2). Sans-IO: time is an argument, nothing here
//! reads a clock or does I/O.
//!
//! # Layout
//! * PEs live in one slab (`Vec<Entry>` with a free list, `u32` indices). An entry is
//!   ~112 bytes: ids, policy values, selection-structure links, expiry, and the user
//!   and ASAP transports stored inline when they hold one IPv4 address.
//! * Pools live in a slab too, found by handle through a seeded hash map. PEs are found
//!   by `(pool index, PE id)` through one seeded hash table of cache-line buckets
//!   (see `pe_table`), whose bucket is fetched while the pool is being looked up.
//! * Each pool has one selection structure chosen by its policy type:
//!   - RR and every private policy (X bit): a ring (intrusive doubly linked list
//!     through the entries) with a head that advances by one per resolution;
//!   - LU, LUD, PLU, PRIO, WRR: an ordered set of `(key, seq, index)`; ties in `key`
//!     are served round-robin by giving selected tied PEs a fresh, larger `seq`;
//!     WRR uses stride scheduling (key = pass value). The sets are B+ trees whose
//!     nodes share one arena (see `ordered`); an entry keeps the leaf holding it.
//!     (An indexed 4-ary heap was tried instead: 16 bytes/PE less and faster
//!     re-registration, but 2-4x slower resolution from unpredictable branches in
//!     the top-k walk; resolution is the hot path, so an ordered structure stayed.)
//!   - RAND, WRAND, RLU: a dense array with swap-remove, plus a Fenwick tree of
//!     weights for WRAND/RLU (weighted sampling without replacement).
//! * Expiry uses lazy timer buckets of configurable width; re-registration only
//!   rewrites the entry's expiry, the bucket re-files the entry when it fires.
//! * The PE checksum is kept per owner as a running sum of 16-bit words.
//!
//! All per-operation costs are O(log n) in the pool size (resolution O(log n + items)),
//! except the scans that are inherently O(all PEs): ownership takeover, resync
//! mark/sweep and handle-table iteration (which is resumable and O(1) amortised per
//! returned element when most PEs match).

mod checksum;
mod fenwick;
mod grow;
mod hash;
mod ordered;
mod pe_table;
pub mod rng;
mod transport;

pub use checksum::compute as compute_checksum;
pub use transport::{InlineTransport, TransportRef};

use crate::time::Time;
use crate::wire::types::{cause, policy_type, Policy, PoolElement, PoolHandle, Transport};
use fenwick::Fenwick;
use hash::{PreHashed, SeededState};
use ordered::{pack, Arena, OrdSet};
use pe_table::PeTable;
use rng::Rng;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use transport::Stored;

const NIL: u32 = u32::MAX;
const NO_BUCKET: u64 = u64::MAX;
const NEVER: u64 = u64::MAX;

const F_LIVE: u8 = 1;
const F_MARK: u8 = 2;
/// The entry is a member of its pool's ordered set (WRR weight 0 PEs are not).
const F_IN_SET: u8 = 4;

/// Unit of the Registration Life field (digest §5.6, §12 #1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegLifeUnit {
    /// RFC 5354: seconds.
    #[default]
    Seconds,
    /// RSPLIB and Wireshark: milliseconds.
    Millis,
}

/// Handlespace configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unit of `PoolElement::reg_life`.
    pub reg_life_unit: RegLifeUnit,
    /// Width of an expiry bucket: a PE expires never early and at most this late.
    pub expiry_granularity: Duration,
    /// Maximum number of pools (further new pools: Lack of Resources).
    pub max_pools: usize,
    /// Maximum number of PEs in one pool.
    pub max_pes_per_pool: usize,
    /// Maximum number of PEs in total.
    pub max_pes: usize,
    /// Seed of the random policies (RAND, WRAND, RLU).
    pub seed: u64,
    /// Key of the hash maps (handles and PE ids come from the network: a secret random
    /// key prevents hash flooding). The default takes one from the standard library's
    /// per-process random hasher keys.
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let hash_seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Config {
            reg_life_unit: RegLifeUnit::Seconds,
            expiry_granularity: Duration::from_millis(50),
            max_pools: 1 << 20,
            max_pes_per_pool: 1 << 22,
            max_pes: 1 << 24,
            seed: 0x0123_4567_89ab_cdef,
            hash_seed,
        }
    }
}

/// A PE in the handlespace, as returned by [`Handlespace::resolve`] and the iterators.
/// It is valid until the next call that changes the handlespace; turn it into a
/// [`PeView`] with [`Handlespace::element`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ElementRef(pub u32);

/// Which part of a registration holds an invalid value (for cause 0x3's information,
/// which is the offending TLV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidField {
    /// Empty pool handle.
    PoolHandle,
    /// PE identifier 0, or registration life 0 or below -1 (the Pool Element TLV).
    PoolElement,
    /// A user transport with no address.
    UserTransport,
    /// An unknown standard policy type, or a known one with malformed data.
    Policy,
}

/// Information accompanying a rejection, for the caller to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectInfo {
    /// Nothing to add.
    None,
    /// 0x3: which TLV holds the invalid value.
    Invalid(InvalidField),
    /// 0x5: the pool's overall policy.
    Policy(Policy),
    /// 0x7: a transport of the pool's type.
    Transport(Transport),
}

/// A rejected registration: the cause code (see [`cause`]) and its information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterError {
    /// The error cause code.
    pub code: u16,
    /// What to put in the cause's information field.
    pub info: RejectInfo,
}

impl RegisterError {
    fn new(code: u16, info: RejectInfo) -> Self {
        RegisterError { code, info }
    }
    fn invalid(f: InvalidField) -> Self {
        RegisterError::new(cause::INVALID_VALUES, RejectInfo::Invalid(f))
    }
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:04x})", cause::name(self.code), self.code)
    }
}

impl std::error::Error for RegisterError {}

/// An accepted registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// True for a new PE, false for a re-registration.
    pub new: bool,
    /// The PE.
    pub element: ElementRef,
    /// On re-registration, the previous owner (home server id).
    pub previous_owner: Option<u32>,
}

/// When a registered PE expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// From its Registration Life, counted from this time (-1: never).
    Life(Time),
    /// Never (e.g. PEs learnt from peers, which their home server removes).
    Never,
    /// At this time.
    At(Time),
}

/// The pool handle is not in the handlespace (cause 0x9 for a resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownPool;

/// A position in the handlespace for resumable iteration over all PEs (slab order).
/// PEs present for the whole iteration are returned exactly once; PEs added or
/// removed meanwhile may or may not be (an ENRP peer learns of those by updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor(u32);

impl Cursor {
    /// The beginning.
    pub const START: Cursor = Cursor(0);
}

/// The data of a private policy, boxed: rare, and keeps entries small.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PrivateData(Vec<u8>);

#[derive(Debug, Default)]
struct Entry {
    id: u32,
    pool: u32,
    owner: u32,
    reg_life: i32,
    ptype: u32,
    v1: u32,
    v2: u32,
    /// LUD: times handed out since (re-)registration.
    lud: u32,
    /// Ordered-set tie breaker.
    seq: u32,
    /// Ring: previous; dense: position; ordered set: the leaf holding it (a
    /// hint that saves the descent when it leaves); free: next free.
    link_a: u32,
    /// Ring: next.
    link_b: u32,
    unreachable: u16,
    flags: u8,
    /// Ordered-set key (WRR: pass value).
    key: u64,
    /// Expiry in µs, NEVER for none.
    expiry: u64,
    /// The timer bucket holding this entry, NO_BUCKET for none.
    bucket: u64,
    user: Stored,
    asap: Stored,
    /// Data of a private policy.
    extra: Option<Box<PrivateData>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderKind {
    Lu,
    Lud,
    Plu,
    Prio,
    Wrr,
}

#[derive(Debug)]
enum Selector {
    Ring {
        head: u32,
    },
    Ordered {
        kind: OrderKind,
        set: OrdSet,
        next_seq: u32,
        /// WRR virtual time: pass of the last PE served first.
        vt: u64,
    },
    Dense {
        members: Vec<u32>,
        /// Weights (WRAND, RLU); None for RAND.
        fen: Option<Fenwick>,
    },
}

#[derive(Debug)]
struct Pool {
    handle: Box<[u8]>,
    /// Keyed hash of `handle` (its key in `by_handle`).
    hash: u64,
    /// Next pool whose handle has the same 64-bit hash (NIL: none); such
    /// collisions need the secret seed to provoke, so chains stay short.
    next_same: u32,
    handle_words: u64,
    overall: Policy,
    ttype: u16,
    tuse: u16,
    count: u32,
    sel: Selector,
}

#[derive(Debug, Default, Clone, Copy)]
struct OwnerStat {
    words: u64,
    count: u32,
}

/// Stride scale for WRR: pass advances by `WRR_SCALE / weight`.
const WRR_SCALE: u64 = 1 << 32;
/// Rebase WRR passes before they could overflow.
const WRR_LIMIT: u64 = 1 << 62;

/// The handlespace of an ENRP server (or of a PU's cache).
#[derive(Debug)]
pub struct Handlespace {
    cfg: Config,
    bucket_us: u64,
    entries: Vec<Entry>,
    free_entry: u32,
    live: usize,
    pools: Vec<Option<Pool>>,
    free_pools: Vec<u32>,
    pool_count: usize,
    /// Pools by the keyed 64-bit hash of their handle (first of a chain through
    /// `Pool::next_same`): one multiply to hash a handle and no key bytes to
    /// chase through a pointer in the table.
    by_handle: HashMap<u64, u32, PreHashed>,
    handle_seed: u64,
    /// PEs by (pool, id).
    by_id: PeTable,
    owners: HashMap<u32, OwnerStat, SeededState>,
    buckets: BTreeMap<u64, Vec<u32>>,
    /// The nodes of the pools' ordered sets.
    ord: Arena,
    rng: Rng,
    scratch: Vec<u128>,
    scratch_w: Vec<(usize, u64)>,
}

fn policy_kind_ok(ptype: u32) -> bool {
    use policy_type::*;
    matches!(
        ptype,
        ROUND_ROBIN
            | WEIGHTED_ROUND_ROBIN
            | RANDOM
            | WEIGHTED_RANDOM
            | PRIORITY
            | LEAST_USED
            | LEAST_USED_DEGRADATION
            | PRIORITY_LEAST_USED
            | RANDOMIZED_LEAST_USED
    ) || ptype & PRIVATE_BIT != 0
}

/// Splits a policy into (type, value1, value2, private data). Err for non-private
/// unknown types.
#[allow(clippy::type_complexity)]
fn split_policy(p: &Policy) -> Result<(u32, u32, u32, Option<Box<PrivateData>>), RegisterError> {
    Ok(match p {
        Policy::RoundRobin => (policy_type::ROUND_ROBIN, 0, 0, None),
        Policy::WeightedRoundRobin { weight } => {
            (policy_type::WEIGHTED_ROUND_ROBIN, *weight, 0, None)
        }
        Policy::Random => (policy_type::RANDOM, 0, 0, None),
        Policy::WeightedRandom { weight } => (policy_type::WEIGHTED_RANDOM, *weight, 0, None),
        Policy::Priority { priority } => (policy_type::PRIORITY, *priority, 0, None),
        Policy::LeastUsed { load } => (policy_type::LEAST_USED, *load, 0, None),
        Policy::LeastUsedDegradation { load, degradation } => (
            policy_type::LEAST_USED_DEGRADATION,
            *load,
            *degradation,
            None,
        ),
        Policy::PriorityLeastUsed { load, degradation } => {
            (policy_type::PRIORITY_LEAST_USED, *load, *degradation, None)
        }
        Policy::RandomizedLeastUsed { load } => {
            (policy_type::RANDOMIZED_LEAST_USED, *load, 0, None)
        }
        Policy::Other {
            policy_type: t,
            data,
        } => {
            if t & policy_type::PRIVATE_BIT == 0 {
                // Unassigned standard code, or a standard one the codec could not
                // decode: never guess.
                return Err(RegisterError::invalid(InvalidField::Policy));
            }
            let extra = if data.is_empty() {
                None
            } else {
                Some(Box::new(PrivateData(data.clone())))
            };
            (*t, 0, 0, extra)
        }
    })
}

fn make_selector(ptype: u32) -> Selector {
    use policy_type::*;
    let ordered = |kind| Selector::Ordered {
        kind,
        set: OrdSet::default(),
        next_seq: 0,
        vt: 0,
    };
    match ptype {
        WEIGHTED_ROUND_ROBIN => ordered(OrderKind::Wrr),
        PRIORITY => ordered(OrderKind::Prio),
        LEAST_USED => ordered(OrderKind::Lu),
        LEAST_USED_DEGRADATION => ordered(OrderKind::Lud),
        PRIORITY_LEAST_USED => ordered(OrderKind::Plu),
        RANDOM => Selector::Dense {
            members: Vec::new(),
            fen: None,
        },
        WEIGHTED_RANDOM | RANDOMIZED_LEAST_USED => Selector::Dense {
            members: Vec::new(),
            fen: Some(Fenwick::default()),
        },
        // RR and all private policies.
        _ => Selector::Ring { head: NIL },
    }
}

/// Ordered-set key of an entry (not WRR, whose key is its pass value).
#[inline]
fn order_key(kind: OrderKind, e: &Entry) -> u64 {
    match kind {
        OrderKind::Lu => e.v1 as u64,
        // (2^32-1)^2 + 2^32-1 < 2^64: cannot overflow.
        OrderKind::Lud => e.v1 as u64 + e.lud as u64 * e.v2 as u64,
        OrderKind::Plu => e.v1 as u64 + e.v2 as u64,
        OrderKind::Prio => (u32::MAX - e.v1) as u64,
        OrderKind::Wrr => e.key,
    }
}

/// Records in the entries the leaf of the ordered set holding them (`link_a`).
#[inline(always)]
fn relinker(entries: &mut [Entry]) -> impl FnMut(u32, u32) + '_ {
    move |i, leaf| entries[i as usize].link_a = leaf
}

#[inline]
fn wrr_stride(weight: u32) -> u64 {
    WRR_SCALE / weight.max(1) as u64
}

/// Weight of an entry in a dense weighted pool.
#[inline]
fn dense_weight(e: &Entry) -> u64 {
    if e.ptype == policy_type::RANDOMIZED_LEAST_USED {
        (u32::MAX - e.v1) as u64
    } else {
        e.v1 as u64
    }
}

fn neutral_transport(ttype: u16, tuse: u16) -> Transport {
    use crate::wire::types::ptype;
    use std::net::{IpAddr, Ipv4Addr};
    let addr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    match ttype {
        ptype::SCTP_TRANSPORT => Transport::Sctp {
            port: 0,
            transport_use: tuse,
            addrs: vec![addr],
        },
        ptype::TCP_TRANSPORT => Transport::Tcp {
            port: 0,
            transport_use: tuse,
            addr,
        },
        ptype::UDP_TRANSPORT => Transport::Udp { port: 0, addr },
        ptype::UDP_LITE_TRANSPORT => Transport::UdpLite { port: 0, addr },
        ptype::DCCP_TRANSPORT => Transport::Dccp {
            port: 0,
            service_code: 0,
            addr,
        },
        _ => Transport::Opaque(Vec::new()),
    }
}

/// A read-only view of one PE.
#[derive(Debug, Clone, Copy)]
pub struct PeView<'a> {
    hs: &'a Handlespace,
    e: &'a Entry,
    r: ElementRef,
}

impl<'a> PeView<'a> {
    /// The reference this view was made from.
    pub fn element_ref(&self) -> ElementRef {
        self.r
    }
    /// PE identifier.
    pub fn id(&self) -> u32 {
        self.e.id
    }
    /// Home ENRP server (owner) id.
    pub fn owner(&self) -> u32 {
        self.e.owner
    }
    /// Registration Life as registered.
    pub fn reg_life(&self) -> i32 {
        self.e.reg_life
    }
    /// The pool handle.
    pub fn handle(&self) -> &'a [u8] {
        &self.hs.pool(self.e.pool).handle
    }
    /// The user transport.
    pub fn user_transport(&self) -> TransportRef<'a> {
        // A live entry always has a user transport.
        self.e
            .user
            .as_ref()
            .unwrap_or(TransportRef::Inline(InlineTransport::default_udp()))
    }
    /// The ASAP transport, if the home server recorded one.
    pub fn asap_transport(&self) -> Option<TransportRef<'a>> {
        self.e.asap.as_ref()
    }
    /// The PE's policy with its values as registered.
    pub fn policy(&self) -> Policy {
        entry_policy(self.e)
    }
    /// Policy type.
    pub fn policy_type(&self) -> u32 {
        self.e.ptype
    }
    /// When the PE expires (None: never / not tracked).
    pub fn expiry(&self) -> Option<Time> {
        (self.e.expiry != NEVER).then_some(Time(self.e.expiry))
    }
    /// Unreachability reports since the last (re-)registration.
    pub fn unreachable_reports(&self) -> u32 {
        self.e.unreachable as u32
    }
    /// LUD: times handed out since the last (re-)registration.
    pub fn times_selected(&self) -> u32 {
        self.e.lud
    }
    /// Whether the PE is marked for a resync sweep.
    pub fn is_marked(&self) -> bool {
        self.e.flags & F_MARK != 0
    }
    /// The PE as the shared wire type (allocates).
    pub fn to_pool_element(&self) -> PoolElement {
        PoolElement {
            id: self.e.id,
            home: self.e.owner,
            reg_life: self.e.reg_life,
            user_transport: self.user_transport().to_transport(),
            policy: self.policy(),
            asap_transport: self.asap_transport().map(|t| t.to_transport()),
        }
    }
}

impl InlineTransport {
    fn default_udp() -> InlineTransport {
        // Only reachable if an invariant broke; a harmless placeholder beats a panic.
        match Stored::new(&Transport::Udp {
            port: 0,
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }) {
            Stored::Inline(i) => i,
            _ => unreachable!(),
        }
    }
}

fn entry_policy(e: &Entry) -> Policy {
    use policy_type::*;
    match e.ptype {
        ROUND_ROBIN => Policy::RoundRobin,
        WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: e.v1 },
        RANDOM => Policy::Random,
        WEIGHTED_RANDOM => Policy::WeightedRandom { weight: e.v1 },
        PRIORITY => Policy::Priority { priority: e.v1 },
        LEAST_USED => Policy::LeastUsed { load: e.v1 },
        LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation {
            load: e.v1,
            degradation: e.v2,
        },
        PRIORITY_LEAST_USED => Policy::PriorityLeastUsed {
            load: e.v1,
            degradation: e.v2,
        },
        RANDOMIZED_LEAST_USED => Policy::RandomizedLeastUsed { load: e.v1 },
        t => Policy::Other {
            policy_type: t,
            data: e.extra.as_ref().map(|d| d.0.clone()).unwrap_or_default(),
        },
    }
}

impl Handlespace {
    /// An empty handlespace.
    pub fn new(cfg: Config) -> Handlespace {
        let bucket_us = u64::try_from(cfg.expiry_granularity.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Handlespace {
            bucket_us,
            entries: Vec::new(),
            free_entry: NIL,
            live: 0,
            pools: Vec::new(),
            free_pools: Vec::new(),
            pool_count: 0,
            by_handle: HashMap::with_hasher(PreHashed),
            handle_seed: cfg.hash_seed,
            by_id: PeTable::new(cfg.hash_seed.rotate_left(17) ^ 0xa5a5),
            owners: HashMap::with_hasher(SeededState::new(cfg.hash_seed.rotate_left(41) ^ 0x5a5a)),
            buckets: BTreeMap::new(),
            ord: Arena::default(),
            rng: Rng::new(cfg.seed),
            scratch: Vec::new(),
            scratch_w: Vec::new(),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    #[inline]
    fn pool(&self, p: u32) -> &Pool {
        // Entries only point at live pools.
        self.pools[p as usize].as_ref().expect("live pool")
    }

    #[inline]
    fn handle_hash(&self, handle: &[u8]) -> u64 {
        // The unit tests keep 2 bits so that the collision chains get exercised.
        let mask = if cfg!(test) { 3 } else { u64::MAX };
        hash::hash_bytes(self.handle_seed, handle) & mask
    }

    #[inline]
    fn pool_index(&self, handle: &[u8]) -> Option<u32> {
        self.pool_index_h(handle, self.handle_hash(handle))
    }

    /// [`pool_index`](Self::pool_index) with the handle's hash already computed.
    #[inline]
    fn pool_index_h(&self, handle: &[u8], hh: u64) -> Option<u32> {
        let mut p = *self.by_handle.get(&hh)?;
        loop {
            let pool = self.pool(p);
            if hash::bytes_eq(&pool.handle, handle) {
                return Some(p);
            }
            if pool.next_same == NIL {
                return None;
            }
            p = pool.next_same;
        }
    }

    // ----- counts -----

    /// Number of pools.
    pub fn pool_count(&self) -> usize {
        self.pool_count
    }
    /// Number of PEs.
    pub fn pe_count(&self) -> usize {
        self.live
    }
    /// Number of PEs in a pool (0 for an unknown pool).
    pub fn pool_size(&self, handle: &[u8]) -> usize {
        self.pool_index(handle)
            .map_or(0, |p| self.pool(p).count as usize)
    }
    /// Number of PEs owned by a server.
    pub fn owned_count(&self, owner: u32) -> usize {
        self.owners.get(&owner).map_or(0, |o| o.count as usize)
    }
    /// The PE checksum over the PEs owned by `owner` (0xFFFF for none).
    pub fn checksum(&self, owner: u32) -> u16 {
        checksum::finish(self.owners.get(&owner).map_or(0, |o| o.words))
    }
    /// The PE checksum recomputed from scratch (for audits and tests; O(all PEs)).
    pub fn checksum_from_scratch(&self, owner: u32) -> u16 {
        let v: Vec<(&[u8], u32)> = self
            .iter_all()
            .filter(|v| v.owner() == owner)
            .map(|v| (v.handle(), v.id()))
            .collect();
        checksum::compute(v)
    }
    /// The overall policy of a pool (neutral values).
    pub fn pool_policy(&self, handle: &[u8]) -> Option<&Policy> {
        self.pool_index(handle).map(|p| &self.pool(p).overall)
    }
    /// All pool handles (arbitrary order).
    pub fn pool_handles(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.pools.iter().flatten().map(|p| &p.handle[..])
    }

    // ----- lookups -----

    /// A view of a PE returned by a resolution or iteration.
    pub fn element(&self, r: ElementRef) -> Option<PeView<'_>> {
        let e = self.entries.get(r.0 as usize)?;
        (e.flags & F_LIVE != 0).then_some(PeView { hs: self, e, r })
    }

    fn find(&self, handle: &[u8], id: u32) -> Option<u32> {
        let hh = self.handle_hash(handle);
        // The PE's bucket is fetched while the pool is looked up.
        self.by_id.prefetch(hh, id);
        let pool = self.pool_index_h(handle, hh)?;
        self.by_id.get(hh, pool, id)
    }

    /// A PE by pool handle and id.
    pub fn get(&self, handle: &[u8], id: u32) -> Option<PeView<'_>> {
        self.element(ElementRef(self.find(handle, id)?))
    }

    /// Every PE of a pool, in the pool's selection-structure order (ring order from
    /// the head for RR, key order for the ordered policies).
    pub fn pool_elements(&self, handle: &[u8], out: &mut Vec<ElementRef>) -> bool {
        let Some(p) = self.pool_index(handle) else {
            return false;
        };
        let pool = self.pool(p);
        match &pool.sel {
            Selector::Ring { head } => {
                let mut cur = *head;
                for _ in 0..pool.count {
                    out.push(ElementRef(cur));
                    cur = self.entries[cur as usize].link_b;
                }
            }
            Selector::Ordered { set, .. } => {
                out.extend(set.iter(&self.ord).map(|x| ElementRef(ordered::index(x))));
                // WRR weight-0 PEs are outside the set.
                if set.len() < pool.count as usize {
                    self.push_not_in_set(p, out);
                }
            }
            Selector::Dense { members, .. } => out.extend(members.iter().map(|&i| ElementRef(i))),
        }
        true
    }

    fn push_not_in_set(&self, pool: u32, out: &mut Vec<ElementRef>) {
        // Rare (WRR with weight 0): a scan is acceptable for this diagnostic path.
        for (i, e) in self.entries.iter().enumerate() {
            if e.flags & F_LIVE != 0 && e.pool == pool && e.flags & F_IN_SET == 0 {
                out.push(ElementRef(i as u32));
            }
        }
    }

    /// Every PE, in slab order.
    pub fn iter_all(&self) -> impl Iterator<Item = PeView<'_>> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.flags & F_LIVE != 0)
            .map(move |(i, e)| PeView {
                hs: self,
                e,
                r: ElementRef(i as u32),
            })
    }

    /// Resumable iteration (for chunked ENRP handle-table responses): appends up to
    /// `max` PEs from `cursor` on, optionally only those owned by `owner`, and returns
    /// the cursor to continue from, or None when the end was reached.
    pub fn iter_from(
        &self,
        cursor: Cursor,
        owner: Option<u32>,
        max: usize,
        out: &mut Vec<ElementRef>,
    ) -> Option<Cursor> {
        let mut n = 0;
        let mut i = cursor.0 as usize;
        while i < self.entries.len() {
            if n == max {
                return Some(Cursor(i as u32));
            }
            let e = &self.entries[i];
            if e.flags & F_LIVE != 0 && owner.is_none_or(|o| o == e.owner) {
                out.push(ElementRef(i as u32));
                n += 1;
            }
            i += 1;
        }
        None
    }

    // ----- registration -----

    /// Registers or re-registers `pe` in pool `handle`, owned by server `owner`;
    /// expiry from the PE's Registration Life counted from `now`.
    pub fn register(
        &mut self,
        handle: &[u8],
        pe: &PoolElement,
        owner: u32,
        now: Time,
    ) -> Result<Registered, RegisterError> {
        self.register_ext(handle, pe, owner, Expiry::Life(now))
    }

    fn expiry_of(&self, pe: &PoolElement, exp: Expiry) -> u64 {
        match exp {
            Expiry::Never => NEVER,
            Expiry::At(t) => t.0,
            Expiry::Life(now) => {
                if pe.reg_life < 0 {
                    return NEVER;
                }
                let unit = match self.cfg.reg_life_unit {
                    RegLifeUnit::Seconds => 1_000_000u64,
                    RegLifeUnit::Millis => 1_000,
                };
                now.0
                    .saturating_add(pe.reg_life as u64 * unit)
                    .min(NEVER - 1)
            }
        }
    }

    /// [`register`](Self::register) with an explicit expiry choice.
    pub fn register_ext(
        &mut self,
        handle: &[u8],
        pe: &PoolElement,
        owner: u32,
        exp: Expiry,
    ) -> Result<Registered, RegisterError> {
        // Validity (cause 0x3).
        if handle.is_empty() {
            return Err(RegisterError::invalid(InvalidField::PoolHandle));
        }
        if pe.id == 0 || pe.reg_life == 0 || pe.reg_life < -1 {
            return Err(RegisterError::invalid(InvalidField::PoolElement));
        }
        if let Transport::Sctp { addrs, .. } = &pe.user_transport {
            if addrs.is_empty() {
                return Err(RegisterError::invalid(InvalidField::UserTransport));
            }
        }
        let (ptype, v1, v2, extra) = split_policy(&pe.policy)?;
        debug_assert!(policy_kind_ok(ptype));
        let ttype = pe.user_transport.param_type();
        let tuse = pe.user_transport.transport_use();
        let expiry = self.expiry_of(pe, exp);

        // Pool consistency (0x5, 0x7, 0x8) or creation.
        let hh = self.handle_hash(handle);
        // The PE's bucket in by_id is fetched while the pool is looked up.
        self.by_id.prefetch(hh, pe.id);
        let pool_idx = match self.pool_index_h(handle, hh) {
            Some(p) => {
                let pool = self.pool(p);
                if pool.overall.policy_type() != ptype {
                    return Err(RegisterError::new(
                        cause::INCONSISTENT_POLICY,
                        RejectInfo::Policy(pool.overall.clone()),
                    ));
                }
                if pool.ttype != ttype {
                    return Err(RegisterError::new(
                        cause::INCONSISTENT_TRANSPORT,
                        RejectInfo::Transport(neutral_transport(pool.ttype, pool.tuse)),
                    ));
                }
                if pool.tuse != tuse {
                    return Err(RegisterError::new(
                        cause::INCONSISTENT_DATA_CONTROL,
                        RejectInfo::None,
                    ));
                }
                p
            }
            None => {
                if self.pool_count >= self.cfg.max_pools || self.live >= self.cfg.max_pes {
                    return Err(RegisterError::new(
                        cause::LACK_OF_RESOURCES,
                        RejectInfo::None,
                    ));
                }
                self.create_pool(handle, hh, &pe.policy, ttype, tuse)
            }
        };

        // In a large handlespace the PE lookup below and the root of the pool's
        // ordered set are both cache misses: start fetching the root first, so
        // that the two overlap.
        if let Some(Pool {
            sel: Selector::Ordered { set, .. },
            ..
        }) = &self.pools[pool_idx as usize]
        {
            set.prefetch_root(&self.ord);
        }

        // One hash and probe for both outcomes (the slot the new entry will get
        // is known before it is filled).
        let pools = &self.pools;
        let hash_of = |p: u32| pools[p as usize].as_ref().map_or(0, |p| p.hash);
        let slot = match self.by_id.entry(hh, pool_idx, pe.id, hash_of) {
            Ok(idx) => {
                let prev = self.reregister(idx, pe, owner, v1, v2, extra, expiry);
                return Ok(Registered {
                    new: false,
                    element: ElementRef(idx),
                    previous_owner: Some(prev),
                });
            }
            Err(v) => v,
        };

        let count = self.pools[pool_idx as usize]
            .as_ref()
            .map_or(0, |p| p.count as usize);
        if count >= self.cfg.max_pes_per_pool || self.live >= self.cfg.max_pes {
            if count == 0 {
                self.drop_pool(pool_idx);
            }
            return Err(RegisterError::new(
                cause::LACK_OF_RESOURCES,
                RejectInfo::None,
            ));
        }

        let entry = Entry {
            id: pe.id,
            pool: pool_idx,
            owner,
            reg_life: pe.reg_life,
            ptype,
            v1,
            v2,
            lud: 0,
            seq: 0,
            link_a: NIL,
            link_b: NIL,
            unreachable: 0,
            flags: F_LIVE,
            key: 0,
            expiry,
            bucket: NO_BUCKET,
            user: Stored::new(&pe.user_transport),
            asap: Stored::from_opt(pe.asap_transport.as_ref()),
            extra,
        };
        let next = if self.free_entry != NIL {
            self.free_entry
        } else {
            self.entries.len() as u32
        };
        self.by_id.insert(slot, next);
        let idx = self.alloc(entry);
        debug_assert_eq!(idx, next);
        self.live += 1;
        self.pool_mut(pool_idx).count += 1;
        self.sel_insert(pool_idx, idx);
        self.owner_add(owner, pool_idx, pe.id);
        self.schedule(idx);
        Ok(Registered {
            new: true,
            element: ElementRef(idx),
            previous_owner: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn reregister(
        &mut self,
        idx: u32,
        pe: &PoolElement,
        owner: u32,
        v1: u32,
        v2: u32,
        extra: Option<Box<PrivateData>>,
        expiry: u64,
    ) -> u32 {
        let pool_idx = self.entries[idx as usize].pool;
        let prev_owner = self.entries[idx as usize].owner;
        if prev_owner != owner {
            self.owner_sub(prev_owner, pool_idx, pe.id);
            self.owner_add(owner, pool_idx, pe.id);
        }
        // Policy values: update the selection structure only if the position moves.
        let pool = self.pools[pool_idx as usize].as_mut().expect("live pool");
        let entries = &mut self.entries;
        let e = &mut entries[idx as usize];
        let ord = &mut self.ord;
        match &mut pool.sel {
            Selector::Ring { .. } => {}
            Selector::Ordered {
                kind,
                set,
                next_seq,
                vt,
            } => {
                let kind = *kind;
                let in_set = e.flags & F_IN_SET != 0;
                let (old, seq, leaf) = (e.key, e.seq, e.link_a);
                // None if the PE keeps its place, else its new (key, seq) in the
                // set, or None inside for a WRR PE leaving it (weight 0).
                let moved = if kind == OrderKind::Wrr {
                    if e.v1 == v1 {
                        None
                    } else {
                        e.flags &= !F_IN_SET;
                        let to = (v1 > 0).then(|| {
                            // Keep the PE's place in the cycle: re-scale its
                            // remaining distance to the new stride.
                            let base = if in_set {
                                old.saturating_sub(wrr_stride(e.v1))
                            } else {
                                *vt
                            };
                            e.key = base.max(*vt).saturating_add(wrr_stride(v1));
                            e.seq = bump(next_seq);
                            e.flags |= F_IN_SET;
                            (e.key, e.seq)
                        });
                        e.v1 = v1;
                        Some(to)
                    }
                } else {
                    e.v1 = v1;
                    e.v2 = v2;
                    e.lud = 0;
                    let key = order_key(kind, e);
                    (key != old).then(|| {
                        e.key = key;
                        e.seq = bump(next_seq);
                        Some((key, e.seq))
                    })
                };
                if let Some(to) = moved {
                    let relink = &mut relinker(entries);
                    let from = pack(old, seq, idx);
                    match to {
                        Some((key, seq)) if in_set => {
                            set.replace(ord, from, leaf, pack(key, seq, idx), relink);
                        }
                        Some((key, seq)) => set.insert(ord, pack(key, seq, idx), relink),
                        None if in_set => {
                            set.remove(ord, from, leaf, relink);
                        }
                        None => {}
                    }
                }
                let wrap = *next_seq == u32::MAX || *vt >= WRR_LIMIT;
                if wrap {
                    self.renumber(pool_idx);
                }
            }
            Selector::Dense { fen, .. } => {
                if let Some(fen) = fen {
                    let old = dense_weight(e);
                    e.v1 = v1;
                    let new = dense_weight(e);
                    if old != new {
                        fen.add(e.link_a as usize, new.wrapping_sub(old));
                    }
                }
            }
        }
        let e = &mut self.entries[idx as usize];
        e.v1 = v1;
        e.v2 = v2;
        e.lud = 0;
        e.extra = extra;
        e.owner = owner;
        e.reg_life = pe.reg_life;
        e.unreachable = 0;
        e.flags &= !F_MARK;
        e.user.update(&pe.user_transport);
        e.asap.update_opt(pe.asap_transport.as_ref());
        e.expiry = expiry;
        self.reschedule(idx);
        prev_owner
    }

    fn create_pool(
        &mut self,
        handle: &[u8],
        hash: u64,
        policy: &Policy,
        ttype: u16,
        tuse: u16,
    ) -> u32 {
        let pool = Pool {
            handle: handle.into(),
            hash,
            next_same: NIL,
            handle_words: checksum::handle_words(handle),
            overall: policy.neutral(),
            ttype,
            tuse,
            count: 0,
            sel: make_selector(policy.policy_type()),
        };
        let idx = match self.free_pools.pop() {
            Some(i) => {
                self.pools[i as usize] = Some(pool);
                i
            }
            None => {
                self.pools.push(Some(pool));
                (self.pools.len() - 1) as u32
            }
        };
        // A colliding pool goes first in the chain.
        if let Some(next) = self.by_handle.insert(hash, idx) {
            self.pool_mut(idx).next_same = next;
        }
        self.pool_count += 1;
        idx
    }

    fn drop_pool(&mut self, p: u32) {
        if let Some(pool) = self.pools[p as usize].take() {
            // Unlink from the chain of pools with the same hash.
            let first = self.by_handle[&pool.hash];
            if first == p {
                if pool.next_same == NIL {
                    self.by_handle.remove(&pool.hash);
                } else {
                    self.by_handle.insert(pool.hash, pool.next_same);
                }
            } else {
                let mut q = first;
                while self.pool(q).next_same != p {
                    q = self.pool(q).next_same;
                }
                self.pool_mut(q).next_same = pool.next_same;
            }
            self.free_pools.push(p);
            self.pool_count -= 1;
        }
    }

    #[inline]
    fn pool_mut(&mut self, p: u32) -> &mut Pool {
        self.pools[p as usize].as_mut().expect("live pool")
    }

    fn alloc(&mut self, e: Entry) -> u32 {
        if self.free_entry != NIL {
            let i = self.free_entry;
            self.free_entry = self.entries[i as usize].link_a;
            self.entries[i as usize] = e;
            i
        } else {
            self.entries.push(e);
            (self.entries.len() - 1) as u32
        }
    }

    fn owner_add(&mut self, owner: u32, pool: u32, id: u32) {
        let w = checksum::pe_words(self.pool(pool).handle_words, id);
        let o = self.owners.entry(owner).or_default();
        o.words += w;
        o.count += 1;
    }

    fn owner_sub(&mut self, owner: u32, pool: u32, id: u32) {
        let w = checksum::pe_words(self.pool(pool).handle_words, id);
        if let Some(o) = self.owners.get_mut(&owner) {
            o.words -= w;
            o.count -= 1;
            if o.count == 0 {
                self.owners.remove(&owner);
            }
        }
    }

    // ----- selection structures -----

    fn sel_insert(&mut self, p: u32, idx: u32) {
        let pool = self.pools[p as usize].as_mut().expect("live pool");
        let entries = &mut self.entries;
        let ord = &mut self.ord;
        match &mut pool.sel {
            Selector::Ring { head } => {
                if *head == NIL {
                    entries[idx as usize].link_a = idx;
                    entries[idx as usize].link_b = idx;
                    *head = idx;
                } else {
                    // At the tail: just before the head.
                    let h = *head;
                    let tail = entries[h as usize].link_a;
                    entries[idx as usize].link_a = tail;
                    entries[idx as usize].link_b = h;
                    entries[tail as usize].link_b = idx;
                    entries[h as usize].link_a = idx;
                }
            }
            Selector::Ordered {
                kind,
                set,
                next_seq,
                vt,
            } => {
                let e = &mut entries[idx as usize];
                if *kind == OrderKind::Wrr {
                    if e.v1 == 0 {
                        return;
                    }
                    e.key = vt.saturating_add(wrr_stride(e.v1));
                } else {
                    e.key = order_key(*kind, e);
                }
                e.seq = bump(next_seq);
                e.flags |= F_IN_SET;
                let x = pack(e.key, e.seq, idx);
                set.insert(ord, x, &mut relinker(entries));
                if *next_seq == u32::MAX {
                    self.renumber(p);
                }
            }
            Selector::Dense { members, fen } => {
                let e = &mut entries[idx as usize];
                e.link_a = members.len() as u32;
                members.push(idx);
                if let Some(fen) = fen {
                    fen.push(dense_weight(e));
                }
            }
        }
    }

    fn sel_remove(&mut self, p: u32, idx: u32) {
        let pool = self.pools[p as usize].as_mut().expect("live pool");
        let entries = &mut self.entries;
        let ord = &mut self.ord;
        match &mut pool.sel {
            Selector::Ring { head } => {
                let (prev, next) = (entries[idx as usize].link_a, entries[idx as usize].link_b);
                if next == idx {
                    *head = NIL;
                } else {
                    entries[prev as usize].link_b = next;
                    entries[next as usize].link_a = prev;
                    if *head == idx {
                        *head = next;
                    }
                }
            }
            Selector::Ordered { set, .. } => {
                let e = &mut entries[idx as usize];
                if e.flags & F_IN_SET != 0 {
                    e.flags &= !F_IN_SET;
                    let (x, leaf) = (pack(e.key, e.seq, idx), e.link_a);
                    set.remove(ord, x, leaf, &mut relinker(entries));
                }
            }
            Selector::Dense { members, fen } => {
                let pos = entries[idx as usize].link_a as usize;
                let last = members.len() - 1;
                if let Some(fen) = fen {
                    if pos != last {
                        let wl = dense_weight(&entries[members[last] as usize]);
                        let wp = dense_weight(&entries[idx as usize]);
                        fen.add(pos, wl.wrapping_sub(wp));
                    }
                    fen.pop();
                }
                members.swap_remove(pos);
                if pos != last {
                    entries[members[pos] as usize].link_a = pos as u32;
                }
            }
        }
    }

    /// Renumbers an ordered set's tie breakers from 0 (and rebases WRR passes) so that
    /// neither can overflow. Runs once per ~2^31 operations on a pool: amortised O(1).
    fn renumber(&mut self, p: u32) {
        let pool = self.pools[p as usize].as_mut().expect("live pool");
        if let Selector::Ordered {
            kind,
            set,
            next_seq,
            vt,
        } = &mut pool.sel
        {
            let base = if *kind == OrderKind::Wrr {
                set.first(&self.ord).map_or(*vt, ordered::key).min(*vt)
            } else {
                0
            };
            let sc = &mut self.scratch;
            sc.clear();
            let mut seq = 0u32;
            sc.extend(set.iter(&self.ord).map(|x| {
                let i = ordered::index(x);
                let e = &mut self.entries[i as usize];
                e.key = ordered::key(x) - base;
                e.seq = seq;
                seq += 1;
                pack(e.key, e.seq, i)
            }));
            set.rebuild(&mut self.ord, sc, &mut relinker(&mut self.entries));
            *next_seq = seq;
            *vt -= base;
        }
    }

    // ----- deregistration -----

    /// Removes a PE. Returns it, or None if unknown (which the caller treats as a
    /// successful deregistration). The pool disappears with its last PE.
    pub fn deregister(&mut self, handle: &[u8], id: u32) -> Option<PoolElement> {
        let idx = self.find(handle, id)?;
        Some(self.remove_idx(idx))
    }

    /// Removes a PE without building the removed value (cheaper). Returns whether it
    /// existed.
    pub fn remove(&mut self, handle: &[u8], id: u32) -> bool {
        // Take the key out of by_id in the probe that finds it (not a lookup and
        // then a second hash and probe to remove it), fetched while the pool is
        // looked up.
        let hh = self.handle_hash(handle);
        self.by_id.prefetch(hh, id);
        let Some(pool) = self.pool_index_h(handle, hh) else {
            return false;
        };
        match self.by_id.remove(hh, pool, id) {
            Some(idx) => {
                self.unlink_unkeyed(idx);
                true
            }
            None => false,
        }
    }

    fn remove_idx(&mut self, idx: u32) -> PoolElement {
        let pe = {
            let e = &mut self.entries[idx as usize];
            PoolElement {
                id: e.id,
                home: e.owner,
                reg_life: e.reg_life,
                user_transport: e.user.take().unwrap_or(Transport::Opaque(Vec::new())),
                policy: entry_policy(e),
                asap_transport: e.asap.take(),
            }
        };
        self.unlink(idx);
        pe
    }

    fn unlink(&mut self, idx: u32) {
        let e = &self.entries[idx as usize];
        let (pool, id) = (e.pool, e.id);
        self.by_id.remove(self.pool(pool).hash, pool, id);
        self.unlink_unkeyed(idx);
    }

    /// [`unlink`](Self::unlink) of an entry already removed from `by_id`.
    fn unlink_unkeyed(&mut self, idx: u32) {
        let (pool, id, owner) = {
            let e = &self.entries[idx as usize];
            (e.pool, e.id, e.owner)
        };
        self.sel_remove(pool, idx);
        self.owner_sub(owner, pool, id);
        let p = self.pool_mut(pool);
        p.count -= 1;
        if p.count == 0 {
            self.drop_pool(pool);
        }
        let e = &mut self.entries[idx as usize];
        e.flags = 0;
        e.bucket = NO_BUCKET;
        e.user = Stored::None;
        e.asap = Stored::None;
        e.extra = None;
        e.link_a = self.free_entry;
        self.free_entry = idx;
        self.live -= 1;
    }

    // ----- ownership, resync, unreachability -----

    /// Sets a PE's owner (e.g. an ENRP update moved it). False if unknown.
    pub fn set_owner(&mut self, handle: &[u8], id: u32, owner: u32) -> bool {
        let Some(idx) = self.find(handle, id) else {
            return false;
        };
        let e = &self.entries[idx as usize];
        let (old, pool) = (e.owner, e.pool);
        if old != owner {
            self.owner_sub(old, pool, id);
            self.owner_add(owner, pool, id);
            self.entries[idx as usize].owner = owner;
        }
        true
    }

    /// Moves every PE of `old_owner` to `new_owner` (takeover, RFC 5353 §3.5) and
    /// appends them to `out`. O(all PEs).
    pub fn take_over(
        &mut self,
        old_owner: u32,
        new_owner: u32,
        out: &mut Vec<ElementRef>,
    ) -> usize {
        if old_owner == new_owner {
            return 0;
        }
        let mut n = 0;
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            if e.flags & F_LIVE != 0 && e.owner == old_owner {
                let (pool, id) = (e.pool, e.id);
                self.owner_sub(old_owner, pool, id);
                self.owner_add(new_owner, pool, id);
                self.entries[i].owner = new_owner;
                out.push(ElementRef(i as u32));
                n += 1;
            }
        }
        n
    }

    /// Marks every PE owned by `owner` (start of a resync, RFC 5353 §3.6). A
    /// (re-)registration of a PE unmarks it. Returns how many were marked.
    pub fn mark_owned_by(&mut self, owner: u32) -> usize {
        let mut n = 0;
        for e in &mut self.entries {
            if e.flags & F_LIVE != 0 && e.owner == owner {
                e.flags |= F_MARK;
                n += 1;
            }
        }
        n
    }

    /// Unmarks one PE. False if unknown.
    pub fn unmark(&mut self, handle: &[u8], id: u32) -> bool {
        match self.find(handle, id) {
            Some(i) => {
                self.entries[i as usize].flags &= !F_MARK;
                true
            }
            None => false,
        }
    }

    /// Removes every PE still marked (end of a resync), appending them to `out`.
    pub fn sweep_marked(&mut self, out: &mut Vec<(PoolHandle, PoolElement)>) -> usize {
        let mut n = 0;
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            if e.flags & F_LIVE != 0 && e.flags & F_MARK != 0 {
                let h = PoolHandle(self.pool(e.pool).handle.to_vec());
                let pe = self.remove_idx(i as u32);
                out.push((h, pe));
                n += 1;
            }
        }
        n
    }

    /// Counts an unreachability report for a PE and returns the count since its last
    /// (re-)registration; None if unknown. The caller decides when to remove it.
    pub fn report_unreachable(&mut self, handle: &[u8], id: u32) -> Option<u32> {
        let i = self.find(handle, id)?;
        let e = &mut self.entries[i as usize];
        e.unreachable = e.unreachable.saturating_add(1);
        Some(e.unreachable as u32)
    }

    // ----- expiry -----

    #[inline]
    fn bucket_of(&self, expiry: u64) -> u64 {
        expiry / self.bucket_us
    }

    fn schedule(&mut self, idx: u32) {
        let exp = self.entries[idx as usize].expiry;
        if exp == NEVER {
            self.entries[idx as usize].bucket = NO_BUCKET;
            return;
        }
        let b = self.bucket_of(exp);
        self.entries[idx as usize].bucket = b;
        self.buckets.entry(b).or_default().push(idx);
    }

    /// After the expiry changed: re-file only if it moved into an earlier bucket (or
    /// was not filed); a later expiry is handled when the old bucket fires.
    fn reschedule(&mut self, idx: u32) {
        let e = &self.entries[idx as usize];
        if e.expiry == NEVER {
            self.entries[idx as usize].bucket = NO_BUCKET;
        } else if e.bucket == NO_BUCKET || self.bucket_of(e.expiry) < e.bucket {
            self.schedule(idx);
        }
    }

    /// The deadline by which [`expire`](Self::expire) should next be called, if any PE
    /// can expire.
    pub fn poll_timeout(&self) -> Option<Time> {
        let (&b, _) = self.buckets.first_key_value()?;
        Some(Time(
            b.saturating_mul(self.bucket_us)
                .saturating_add(self.bucket_us - 1),
        ))
    }

    /// Removes every PE whose life ran out by `now` and appends them (with their pool
    /// handles) to `out`. Returns how many expired.
    pub fn expire(&mut self, now: Time, out: &mut Vec<(PoolHandle, PoolElement)>) -> usize {
        let mut n = 0;
        while let Some((&b, _)) = self.buckets.first_key_value() {
            let deadline = b
                .saturating_mul(self.bucket_us)
                .saturating_add(self.bucket_us - 1);
            if deadline > now.0 {
                break;
            }
            let list = self.buckets.pop_first().map(|x| x.1).unwrap_or_default();
            for idx in list {
                let e = &self.entries[idx as usize];
                if e.flags & F_LIVE == 0 || e.bucket != b {
                    continue; // stale: freed, re-filed earlier, or now never expires
                }
                if e.expiry <= now.0 {
                    let h = PoolHandle(self.pool(e.pool).handle.to_vec());
                    let pe = self.remove_idx(idx);
                    out.push((h, pe));
                    n += 1;
                } else {
                    self.schedule(idx);
                }
            }
        }
        n
    }

    // ----- resolution -----

    /// Handle resolution: appends up to `items` distinct PEs of pool `handle` to `out`
    /// in the order of the pool's policy, updates the policy state (RR head, LUD
    /// counters, WRR passes, round-robin among ties) and returns the pool's overall
    /// policy (neutral values).
    pub fn resolve(
        &mut self,
        handle: &[u8],
        items: usize,
        out: &mut Vec<ElementRef>,
    ) -> Result<Policy, UnknownPool> {
        let p = self.pool_index(handle).ok_or(UnknownPool)?;
        let pool = self.pools[p as usize].as_mut().ok_or(UnknownPool)?;
        let items = items.min(pool.count as usize);
        let overall = pool.overall.clone();
        if items == 0 {
            return Ok(overall);
        }
        let entries = &mut self.entries;
        match &mut pool.sel {
            Selector::Ring { head } => {
                let mut cur = *head;
                for _ in 0..items {
                    out.push(ElementRef(cur));
                    cur = entries[cur as usize].link_b;
                }
                *head = entries[*head as usize].link_b;
            }
            Selector::Ordered {
                kind,
                set,
                next_seq,
                vt,
            } => {
                let kind = *kind;
                let ord = &mut self.ord;
                let sc = &mut self.scratch;
                sc.clear();
                // The selected PEs plus their successor (for the tie check).
                sc.extend(set.iter(ord).take(items + 1));
                let sel = items.min(sc.len());
                out.extend(sc[..sel].iter().map(|&x| ElementRef(ordered::index(x))));
                match kind {
                    OrderKind::Wrr => {
                        if sel > 0 {
                            let x = sc[0];
                            let (k, i) = (ordered::key(x), ordered::index(x));
                            let e = &mut entries[i as usize];
                            *vt = k;
                            e.key = k.saturating_add(wrr_stride(e.v1));
                            e.seq = bump(next_seq);
                            let (y, leaf) = (pack(e.key, e.seq, i), e.link_a);
                            set.replace(ord, x, leaf, y, &mut relinker(entries));
                        }
                    }
                    OrderKind::Lud => {
                        for j in 0..sel {
                            let x = sc[j];
                            let (k, i) = (ordered::key(x), ordered::index(x));
                            let e = &mut entries[i as usize];
                            e.lud = e.lud.saturating_add(1);
                            let nk = order_key(kind, e);
                            let tie = (j > 0 && ordered::key(sc[j - 1]) == k)
                                || sc.get(j + 1).is_some_and(|&y| ordered::key(y) == k);
                            if nk != k || tie {
                                e.key = nk;
                                e.seq = bump(next_seq);
                                let (y, leaf) = (pack(nk, e.seq, i), e.link_a);
                                set.replace(ord, x, leaf, y, &mut relinker(entries));
                            }
                        }
                    }
                    _ => {
                        for j in 0..sel {
                            let x = sc[j];
                            let (k, i) = (ordered::key(x), ordered::index(x));
                            let tie = (j > 0 && ordered::key(sc[j - 1]) == k)
                                || sc.get(j + 1).is_some_and(|&y| ordered::key(y) == k);
                            if tie {
                                let e = &mut entries[i as usize];
                                e.seq = bump(next_seq);
                                let (y, leaf) = (pack(k, e.seq, i), e.link_a);
                                set.replace(ord, x, leaf, y, &mut relinker(entries));
                            }
                        }
                    }
                }
                if *next_seq == u32::MAX || *vt >= WRR_LIMIT {
                    self.renumber(p);
                }
            }
            Selector::Dense { members, fen } => match fen {
                None => sample_uniform(&mut self.rng, members, items, out),
                Some(fen) => {
                    let picked = &mut self.scratch_w;
                    picked.clear();
                    let mut total = fen.total();
                    for _ in 0..items {
                        if total == 0 {
                            break;
                        }
                        let r = self.rng.below(total);
                        let pos = fen.find(r).min(members.len() - 1);
                        let w = dense_weight(&entries[members[pos] as usize]);
                        out.push(ElementRef(members[pos]));
                        fen.add(pos, w.wrapping_neg());
                        total -= w;
                        picked.push((pos, w));
                    }
                    for &(pos, w) in picked.iter() {
                        fen.add(pos, w);
                    }
                }
            },
        }
        Ok(overall)
    }
}

#[inline]
fn bump(seq: &mut u32) -> u32 {
    let s = *seq;
    *seq = seq.saturating_add(1);
    s
}

/// Appends `k` distinct members chosen uniformly, in random order (Floyd's sampling,
/// then a shuffle of the sample).
fn sample_uniform(rng: &mut Rng, members: &[u32], k: usize, out: &mut Vec<ElementRef>) {
    let n = members.len();
    let start = out.len();
    if k * 2 >= n {
        // Dense case: partial Fisher-Yates over positions is simplest.
        let mut pos: Vec<u32> = (0..n as u32).collect();
        for i in 0..k {
            let j = i + rng.below((n - i) as u64) as usize;
            pos.swap(i, j);
            out.push(ElementRef(members[pos[i] as usize]));
        }
        return;
    }
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    let mut set = if k > 32 {
        Some(std::collections::HashSet::with_capacity(k))
    } else {
        None
    };
    for j in (n - k)..n {
        let t = rng.below(j as u64 + 1) as usize;
        let dup = match &set {
            Some(s) => s.contains(&t),
            None => chosen.contains(&t),
        };
        let v = if dup { j } else { t };
        chosen.push(v);
        if let Some(s) = &mut set {
            s.insert(v);
        }
    }
    for i in (1..chosen.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        chosen.swap(i, j);
    }
    out.extend(chosen.iter().map(|&p| ElementRef(members[p])));
    debug_assert_eq!(out.len() - start, k);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_compact() {
        assert!(
            std::mem::size_of::<Entry>() <= 112,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn colliding_handle_hashes_chain() {
        // Under cfg(test) handle hashes have 2 bits: 64 pools collide heavily.
        let mut h = Handlespace::new(Config::default());
        let pe = |id| PoolElement {
            id,
            home: 0,
            reg_life: -1,
            user_transport: Transport::Udp {
                port: 1,
                addr: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        };
        let handle = |i: u32| format!("pool{i}").into_bytes();
        let mut live = std::collections::BTreeSet::new();
        let mut rng = Rng::new(9);
        for _ in 0..2000 {
            let i = rng.below(64) as u32;
            if live.contains(&i) {
                assert!(h.remove(&handle(i), 1));
                live.remove(&i);
            } else {
                h.register(&handle(i), &pe(1), 0, Time(0)).unwrap();
                live.insert(i);
            }
            assert_eq!(h.pool_count(), live.len());
            for j in 0..64 {
                assert_eq!(
                    h.pool_size(&handle(j)),
                    live.contains(&j) as usize,
                    "pool {j}"
                );
            }
        }
    }
}
