//! The ordered sets of the LU, LUD, PLU, PRIO and WRR pools: B+ trees of packed
//! 128-bit items, their nodes in one arena shared by all the pools.
//!
//! An item is `key << 64 | seq << 32 | index` ([`pack`]), so the items of a set are
//! ordered by `(key, seq)` with one integer comparison.
//!
//! Why not `std::collections::BTreeSet<(u64, u32, u32)>` (used before): in a large
//! handlespace, moving a PE (a re-registration with a new load) costs cache and TLB
//! misses, and the standard B-tree takes several per operation: a 100,000-PE pool
//! is six levels of 11-item nodes deep, each node a separate allocation, each
//! level a linear search with a mispredicted branch, and a removal descends from
//! the root again although the PE was found moments before. Here:
//! * nodes are 512 bytes, 31 items per leaf or 25 children per inner node, searched
//!   by branchless binary search after asking for all their cache lines at once;
//! * each PE remembers the leaf holding it (the `relink` callbacks keep that hint
//!   exact), so a removal goes straight to its leaf, and [`OrdSet::replace`]
//!   fetches the leaf a PE leaves and the leaf it enters at the same time;
//! * leaves are chained, so the first items (all a resolution reads) are one leaf
//!   away from the set;
//! * nodes are `u32` indices into one vector with a free list: no allocation per
//!   node, and a pool's set is 16 bytes in the pool.
//!
//! (Nodes of 256 bytes, and a vector of nodes per pool, were measured too: both
//! slower in the handlespace benchmark.)
//!
//! Underfull nodes (below a quarter) are rebalanced with a sibling, so every
//! operation is O(log n) and every node but the root stays at least a quarter full.

const NIL: u32 = u32::MAX;
/// `next` of an inner node (leaves hold the next leaf or NIL there).
const INNER: u32 = u32::MAX - 1;

/// 16-byte slots per node: with the 16-byte header, 512 bytes (eight cache lines).
const SLOTS: usize = 31;
/// Items per leaf.
const LEAF_CAP: usize = SLOTS;
/// Separators per inner node, in slots `0..SEPS`; the children are `u32`s packed
/// four to a slot in the slots after them.
const SEPS: usize = 24;
/// Children per inner node.
const INNER_CAP: usize = SEPS + 1;
const _: () = assert!(SEPS + INNER_CAP.div_ceil(4) <= SLOTS);
/// A node below this many items/children (and not the root) is rebalanced.
const LEAF_MIN: usize = LEAF_CAP / 4;
const INNER_MIN: usize = INNER_CAP / 4;
/// Enough for 2^32 items at the minimum fill (seven items per leaf, six children
/// per inner node).
const MAX_HEIGHT: usize = 16;

/// Packs an item: ordered by `key`, then `seq`; `index` rides along.
#[inline(always)]
pub fn pack(key: u64, seq: u32, index: u32) -> u128 {
    ((key as u128) << 64) | ((seq as u128) << 32) | index as u128
}

/// The key of an item.
#[inline(always)]
pub fn key(x: u128) -> u64 {
    (x >> 64) as u64
}

/// The index of an item.
#[inline(always)]
pub fn index(x: u128) -> u32 {
    x as u32
}

#[derive(Clone)]
#[repr(C, align(64))]
struct Node {
    /// Leaf: number of items; inner node: number of children; free: 0.
    len: u32,
    /// Leaf: the next leaf in order (NIL: the last); inner node: INNER; free: the
    /// next free node.
    next: u32,
    /// Leaf: the items in order. Inner node: separators, then children; separator
    /// `i` separates child `i` (items below it) from child `i + 1`.
    slots: [u128; SLOTS],
}

impl Node {
    const FREE: Node = Node {
        len: 0,
        next: NIL,
        slots: [0; SLOTS],
    };

    #[inline(always)]
    fn child(&self, c: usize) -> u32 {
        (self.slots[SEPS + c / 4] >> (32 * (c % 4))) as u32
    }

    #[inline(always)]
    fn set_child(&mut self, c: usize, v: u32) {
        let sh = 32 * (c % 4);
        let s = &mut self.slots[SEPS + c / 4];
        *s = (*s & !(0xffff_ffff_u128 << sh)) | ((v as u128) << sh);
    }

    #[inline(always)]
    fn seps(&self) -> &[u128] {
        &self.slots[..self.len as usize - 1]
    }

    #[inline(always)]
    fn items(&self) -> &[u128] {
        &self.slots[..self.len as usize]
    }

    /// Makes this an inner node with these separators and children.
    fn set_inner(&mut self, seps: &[u128], children: &[u32]) {
        debug_assert_eq!(seps.len() + 1, children.len());
        self.slots[..seps.len()].copy_from_slice(seps);
        for (c, &v) in children.iter().enumerate() {
            self.set_child(c, v);
        }
        self.len = children.len() as u32;
        self.next = INNER;
    }
}

/// Asks for every cache line of a node at once: a binary search over a cold node
/// would otherwise wait for its lines one after the other.
#[inline(always)]
fn prefetch(n: &Node) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = (n as *const Node).cast::<i8>();
        let mut off = 0;
        while off < std::mem::size_of::<Node>() {
            // SAFETY: a prefetch has no architectural effect; the address is inside
            // the node (which is aligned to a cache line).
            unsafe { _mm_prefetch(p.add(off), _MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = n;
}

/// Position of the first element of `s` that is `>= x` (branchless).
#[inline(always)]
fn lower_bound(s: &[u128], x: u128) -> usize {
    if s.is_empty() {
        return 0;
    }
    // `a < x` is the borrow out of `a - x`, computed with bit operations: written
    // as a comparison (or a mask of one), LLVM turns each step into a branch,
    // which random keys mispredict half the time.
    let below = |a: u128| {
        let d = a.wrapping_sub(x);
        (((!a & x) | (!(a ^ x) & d)) >> 127) as usize
    };
    let mut base = 0usize;
    let mut n = s.len();
    while n > 1 {
        let half = n / 2;
        base += half * below(s[base + half - 1]);
        n -= half;
    }
    base + below(s[base])
}

/// Number of elements of `s` that are `<= x` (branchless).
#[inline(always)]
fn upper_bound(s: &[u128], x: u128) -> usize {
    // x < u128::MAX for every packed item with index < u32::MAX (NIL is never one).
    lower_bound(s, x.saturating_add(1))
}

/// Mutable references to two distinct elements.
#[inline(always)]
fn two_mut<T>(v: &mut [T], i: u32, j: u32) -> (&mut T, &mut T) {
    let (i, j) = (i as usize, j as usize);
    assert_ne!(i, j);
    if i < j {
        let (lo, hi) = v.split_at_mut(j);
        (&mut lo[i], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(i);
        (&mut hi[0], &mut lo[j])
    }
}

/// The path of a descent: (inner node, child taken) per level from the root.
type Path = [(u32, u32); MAX_HEIGHT];

/// The nodes of all the ordered sets of a handlespace.
pub struct Arena {
    nodes: Vec<Node>,
    /// First free node (chained through `next`), NIL for none.
    free: u32,
}

impl Default for Arena {
    fn default() -> Self {
        Arena {
            nodes: Vec::new(),
            free: NIL,
        }
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// An ordered set of packed items: a B+ tree in an [`Arena`]. The handlespace only
/// drops empty sets (a pool goes with its last PE); a set dropped with items would
/// leave its nodes allocated in the arena.
#[derive(Debug)]
pub struct OrdSet {
    root: u32,
    /// Inner levels above the leaves (0: the root is a leaf).
    height: u32,
    first: u32,
    len: u32,
}

impl Default for OrdSet {
    fn default() -> Self {
        OrdSet {
            root: NIL,
            height: 0,
            first: NIL,
            len: 0,
        }
    }
}

impl OrdSet {
    /// Number of items.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// The items in order.
    #[inline]
    pub fn iter<'a>(&self, a: &'a Arena) -> Iter<'a> {
        Iter {
            nodes: &a.nodes,
            leaf: self.first,
            pos: 0,
        }
    }

    /// The smallest item.
    pub fn first(&self, a: &Arena) -> Option<u128> {
        self.iter(a).next()
    }

    /// Descends to the leaf whose range holds `x`, recording the path.
    #[inline(always)]
    fn descend(&self, a: &Arena, x: u128, path: &mut Path) -> u32 {
        let mut node = self.root;
        for p in path.iter_mut().take(self.height as usize) {
            let n = &a.nodes[node as usize];
            prefetch(n);
            let c = upper_bound(n.seps(), x);
            *p = (node, c as u32);
            node = n.child(c);
        }
        prefetch(&a.nodes[node as usize]);
        node
    }

    /// Starts fetching the root, where every insertion and
    /// [`replace`](Self::replace) starts.
    #[inline]
    pub fn prefetch_root(&self, a: &Arena) {
        if let Some(n) = a.nodes.get(self.root as usize) {
            prefetch(n);
        }
    }

    /// Inserts `x`, which must not be in the set. `relink(index, leaf)` is told the
    /// leaf of `x` and of every item the insertion moved to another leaf.
    pub fn insert<R: FnMut(u32, u32)>(&mut self, a: &mut Arena, x: u128, relink: &mut R) {
        if self.root == NIL {
            let l = a.alloc();
            let leaf = &mut a.nodes[l as usize];
            leaf.slots[0] = x;
            leaf.len = 1;
            self.root = l;
            self.first = l;
            self.height = 0;
            self.len = 1;
            relink(index(x), l);
            return;
        }
        let mut path: Path = [(0, 0); MAX_HEIGHT];
        let l = self.descend(a, x, &mut path);
        self.put(a, &path, l, x, relink);
    }

    /// Removes `x`; false if it was not in the set. `hint` is the leaf `relink` last
    /// gave for `x` (any value works, a right one saves the descent from the root);
    /// `relink` is told of the items that moved to another leaf.
    pub fn remove<R: FnMut(u32, u32)>(
        &mut self,
        a: &mut Arena,
        x: u128,
        hint: u32,
        relink: &mut R,
    ) -> bool {
        if let Some(l) = a.nodes.get(hint as usize) {
            // All its lines at once: the search would wait for them one by one.
            prefetch(l);
        }
        let mut path: Path = [(0, 0); MAX_HEIGHT];
        match self.locate(a, x, hint, &mut path) {
            Some((l, pos, have_path)) => {
                self.take(a, &mut path, have_path, l, pos, x, relink);
                true
            }
            None => false,
        }
    }

    /// Replaces `from` (whose leaf `hint` is, as for [`remove`](Self::remove)) by
    /// `to`. The same as a removal and an insertion, but the leaf to take `from`
    /// from and the leaf to put `to` in are fetched together: in a large
    /// handlespace each is a cache miss, and this way they overlap. False (and
    /// nothing inserted) if `from` was not in the set.
    pub fn replace<R: FnMut(u32, u32)>(
        &mut self,
        a: &mut Arena,
        from: u128,
        hint: u32,
        to: u128,
        relink: &mut R,
    ) -> bool {
        if self.root == NIL {
            return false;
        }
        if let Some(l) = a.nodes.get(hint as usize) {
            prefetch(l);
        }
        // Where `to` goes (the descent prefetches its leaf).
        let mut to_path: Path = [(0, 0); MAX_HEIGHT];
        let to_leaf = self.descend(a, to, &mut to_path);
        let mut path: Path = [(0, 0); MAX_HEIGHT];
        let Some((l, pos, have_path)) = self.locate(a, from, hint, &mut path) else {
            return false;
        };
        if self.take(a, &mut path, have_path, l, pos, from, relink) {
            // Taking `from` reshaped the tree: descend again.
            self.insert(a, to, relink);
        } else {
            // Separators only change when the tree is reshaped: the descent holds.
            self.put(a, &to_path, to_leaf, to, relink);
        }
        true
    }

    /// Finds `x`: (leaf, position, whether `path` was filled in).
    #[inline(always)]
    fn locate(&self, a: &Arena, x: u128, hint: u32, path: &mut Path) -> Option<(u32, usize, bool)> {
        if self.root == NIL {
            return None;
        }
        if let Some(leaf) = a.nodes.get(hint as usize) {
            // Free nodes hold nothing and inner nodes are marked (their
            // separators may equal items).
            if leaf.next != INNER {
                let items = leaf.items();
                let pos = lower_bound(items, x);
                if pos < items.len() && items[pos] == x {
                    return Some((hint, pos, false));
                }
            }
        }
        let l = self.descend(a, x, path);
        let items = a.nodes[l as usize].items();
        let pos = lower_bound(items, x);
        (pos < items.len() && items[pos] == x).then_some((l, pos, true))
    }

    /// Puts `x` in leaf `l`, reached by `path`.
    fn put<R: FnMut(u32, u32)>(
        &mut self,
        a: &mut Arena,
        path: &Path,
        l: u32,
        x: u128,
        relink: &mut R,
    ) {
        self.len += 1;
        let leaf = &mut a.nodes[l as usize];
        let len = leaf.len as usize;
        let pos = lower_bound(leaf.items(), x);
        debug_assert!(pos == len || leaf.slots[pos] != x, "duplicate item");
        if len < LEAF_CAP {
            leaf.slots.copy_within(pos..len, pos + 1);
            leaf.slots[pos] = x;
            leaf.len += 1;
            relink(index(x), l);
            return;
        }
        let (mut sep, mut right) = a.split_leaf(l, pos, x, relink);
        for h in (0..self.height as usize).rev() {
            let (n, c) = path[h];
            match a.insert_child(n, c as usize, sep, right) {
                None => return,
                Some(s) => (sep, right) = s,
            }
        }
        // The root split: grow a level.
        let r = a.alloc();
        let old = self.root;
        a.nodes[r as usize].set_inner(&[sep], &[old, right]);
        self.root = r;
        self.height += 1;
        debug_assert!((self.height as usize) < MAX_HEIGHT);
    }

    /// Takes `x` out of position `pos` of leaf `l` (`path` leads there if
    /// `have_path`). Returns whether the tree was reshaped (nodes merged or items
    /// moved between nodes).
    #[allow(clippy::too_many_arguments)]
    fn take<R: FnMut(u32, u32)>(
        &mut self,
        a: &mut Arena,
        path: &mut Path,
        have_path: bool,
        l: u32,
        pos: usize,
        x: u128,
        relink: &mut R,
    ) -> bool {
        let leaf = &mut a.nodes[l as usize];
        let len = leaf.len as usize;
        leaf.slots.copy_within(pos + 1..len, pos);
        leaf.len -= 1;
        self.len -= 1;
        if self.height == 0 {
            if self.len == 0 {
                // Empty. The vector stays (a pool goes with its last PE, and a
                // one-PE pool re-registering with a new load empties its set).
                a.release(l);
                self.root = NIL;
                self.first = NIL;
                return true;
            }
            return false;
        }
        if len > LEAF_MIN {
            return false;
        }
        // Underfull leaf: find its parents (the separators still route x to it),
        // rebalance it with a sibling, then go up while inner nodes underflow.
        if !have_path {
            let l2 = self.descend(a, x, path);
            debug_assert_eq!(l2, l);
        }
        let mut level = self.height as usize;
        loop {
            let (parent, c) = path[level - 1];
            let merged = if level == self.height as usize {
                a.rebalance_leaves(parent, c as usize, relink)
            } else {
                a.rebalance_inners(parent, c as usize)
            };
            if !merged {
                return true;
            }
            level -= 1;
            let plen = a.nodes[parent as usize].len as usize;
            if level == 0 {
                // The root: drop it when a single child is left.
                if plen == 1 {
                    self.root = a.nodes[parent as usize].child(0);
                    a.release(parent);
                    self.height -= 1;
                }
                return true;
            }
            if plen >= INNER_MIN {
                return true;
            }
        }
    }

    /// Removes every item and inserts `items`, which must be in ascending order;
    /// `relink` is told the leaf of each. O(n).
    pub fn rebuild<R: FnMut(u32, u32)>(&mut self, a: &mut Arena, items: &[u128], relink: &mut R) {
        if self.root != NIL {
            a.free_subtree(self.root, self.height);
        }
        *self = OrdSet::default();
        for &x in items {
            // Appending at the end: the descent always takes the last child, and
            // full last leaves split leaving the left one nearly full.
            self.insert(a, x, relink);
        }
    }

    /// Checks the structure (tests): order, fill, separators, leaf chain, length,
    /// and that every node is in the tree or on the free list.
    #[cfg(test)]
    fn check(&self, a: &Arena) {
        if self.root == NIL {
            assert_eq!(self.len, 0);
            assert_eq!(self.first, NIL);
            return;
        }
        let mut leaves = Vec::new();
        let mut inners = 0;
        let n = self.check_node(
            a,
            self.root,
            self.height,
            true,
            None,
            None,
            &mut leaves,
            &mut inners,
        );
        assert_eq!(n, self.len as usize);
        assert!(leaves.len() + inners + a.free_count() <= a.nodes.len());
        assert_eq!(leaves.first().copied(), Some(self.first));
        for w in leaves.windows(2) {
            assert_eq!(a.nodes[w[0] as usize].next, w[1]);
        }
        assert_eq!(a.nodes[*leaves.last().unwrap() as usize].next, NIL);
        let v: Vec<u128> = self.iter(a).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(v.len(), self.len as usize);
    }

    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn check_node(
        &self,
        a: &Arena,
        node: u32,
        height: u32,
        root: bool,
        lo: Option<u128>,
        hi: Option<u128>,
        leaves: &mut Vec<u32>,
        inners: &mut usize,
    ) -> usize {
        let n = &a.nodes[node as usize];
        let len = n.len as usize;
        if height == 0 {
            assert!((1..=LEAF_CAP).contains(&len));
            assert!(root || len >= LEAF_MIN, "underfull leaf {len}");
            assert_ne!(n.next, INNER);
            for &x in n.items() {
                assert!(lo.is_none_or(|lo| x >= lo) && hi.is_none_or(|hi| x < hi));
            }
            leaves.push(node);
            return len;
        }
        *inners += 1;
        assert_eq!(n.next, INNER);
        assert!((2..=INNER_CAP).contains(&len));
        assert!(root || len >= INNER_MIN, "underfull inner node {len}");
        let seps = n.seps();
        assert!(seps.windows(2).all(|w| w[0] < w[1]));
        let mut total = 0;
        for c in 0..len {
            let clo = if c == 0 { lo } else { Some(seps[c - 1]) };
            let chi = if c == len - 1 { hi } else { Some(seps[c]) };
            total += self.check_node(a, n.child(c), height - 1, false, clo, chi, leaves, inners);
        }
        total
    }
}

impl Arena {
    /// Frees a node and everything below it.
    fn free_subtree(&mut self, node: u32, height: u32) {
        if height > 0 {
            for c in 0..self.nodes[node as usize].len as usize {
                let ch = self.nodes[node as usize].child(c);
                self.free_subtree(ch, height - 1);
            }
        }
        self.release(node);
    }

    /// Number of free nodes (tests).
    #[cfg(test)]
    fn free_count(&self) -> usize {
        let mut n = 0;
        let mut i = self.free;
        while i != NIL {
            n += 1;
            i = self.nodes[i as usize].next;
        }
        n
    }

    fn alloc(&mut self) -> u32 {
        if self.free != NIL {
            let i = self.free;
            let n = &mut self.nodes[i as usize];
            self.free = n.next;
            n.len = 0;
            n.next = NIL;
            i
        } else {
            super::grow::push(&mut self.nodes, Node::FREE);
            (self.nodes.len() - 1) as u32
        }
    }

    fn release(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        n.len = 0;
        n.next = self.free;
        self.free = i;
    }

    /// Splits the full leaf `l` while inserting `x` at `pos`; returns the separator
    /// and the new right leaf.
    fn split_leaf<R: FnMut(u32, u32)>(
        &mut self,
        l: u32,
        pos: usize,
        x: u128,
        relink: &mut R,
    ) -> (u128, u32) {
        let r = self.alloc();
        let (left, right) = two_mut(&mut self.nodes, l, r);
        // Appending to the last leaf (ascending inserts, rebuilds): leave the new
        // right leaf at the minimum fill, so such sequences fill leaves to 3/4 and
        // more. Otherwise split evenly.
        let keep = if pos == LEAF_CAP && left.next == NIL {
            LEAF_CAP + 1 - LEAF_MIN
        } else {
            LEAF_CAP.div_ceil(2)
        };
        if pos < keep {
            // x goes left: move the items from keep - 1 on to the right.
            let m = LEAF_CAP - (keep - 1);
            right.slots[..m].copy_from_slice(&left.slots[keep - 1..LEAF_CAP]);
            left.slots.copy_within(pos..keep - 1, pos + 1);
            left.slots[pos] = x;
            right.len = m as u32;
            relink(index(x), l);
        } else {
            let m = LEAF_CAP - keep;
            let rp = pos - keep;
            right.slots[..rp].copy_from_slice(&left.slots[keep..pos]);
            right.slots[rp] = x;
            right.slots[rp + 1..m + 1].copy_from_slice(&left.slots[pos..LEAF_CAP]);
            right.len = (m + 1) as u32;
        }
        left.len = keep as u32;
        right.next = left.next;
        left.next = r;
        for &y in right.items() {
            relink(index(y), r);
        }
        (right.slots[0], r)
    }

    /// Inserts separator `sep` and child `right` after child `c` of inner node `n`;
    /// if `n` was full it splits, and the separator and node to insert one level up
    /// are returned.
    fn insert_child(&mut self, n: u32, c: usize, sep: u128, right: u32) -> Option<(u128, u32)> {
        let node = &mut self.nodes[n as usize];
        let len = node.len as usize;
        if len < INNER_CAP {
            node.slots.copy_within(c..len - 1, c + 1);
            node.slots[c] = sep;
            for i in (c + 1..len).rev() {
                let v = node.child(i);
                node.set_child(i + 1, v);
            }
            node.set_child(c + 1, right);
            node.len += 1;
            return None;
        }
        // Gather the INNER_CAP + 1 children and their separators, then split them.
        let mut seps = [0u128; INNER_CAP];
        let mut child = [NIL; INNER_CAP + 1];
        seps[..c].copy_from_slice(&node.slots[..c]);
        seps[c] = sep;
        seps[c + 1..].copy_from_slice(&node.slots[c..SEPS]);
        for (i, ch) in child.iter_mut().enumerate() {
            *ch = match i.cmp(&(c + 1)) {
                std::cmp::Ordering::Less => node.child(i),
                std::cmp::Ordering::Equal => right,
                std::cmp::Ordering::Greater => node.child(i - 1),
            };
        }
        let total = INNER_CAP + 1;
        let kl = total / 2;
        let r = self.alloc();
        let (left, rn) = two_mut(&mut self.nodes, n, r);
        left.set_inner(&seps[..kl - 1], &child[..kl]);
        rn.set_inner(&seps[kl..total - 1], &child[kl..]);
        Some((seps[kl - 1], r))
    }

    /// Leaf `c` of inner node `parent` is underfull: moves items between it and a
    /// sibling so both are at least a quarter full, or merges the two. Returns true
    /// if they merged (the parent lost a child).
    fn rebalance_leaves<R: FnMut(u32, u32)>(
        &mut self,
        parent: u32,
        c: usize,
        relink: &mut R,
    ) -> bool {
        let p = &self.nodes[parent as usize];
        // The pair (s, s + 1) with separator s.
        let s = c.saturating_sub(1);
        let (li, ri) = (p.child(s), p.child(s + 1));
        let (left, right) = two_mut(&mut self.nodes, li, ri);
        let (ll, rl) = (left.len as usize, right.len as usize);
        let total = ll + rl;
        if total <= LEAF_CAP / 2 {
            left.slots[ll..total].copy_from_slice(&right.slots[..rl]);
            for &y in &right.slots[..rl] {
                relink(index(y), li);
            }
            left.len = total as u32;
            left.next = right.next;
            self.release(ri);
            self.remove_child(parent, s);
            return true;
        }
        let kl = total / 2;
        if ll < kl {
            // Move the first kl - ll items of the right leaf to the left one.
            let m = kl - ll;
            left.slots[ll..kl].copy_from_slice(&right.slots[..m]);
            right.slots.copy_within(m..rl, 0);
            for &y in &left.slots[ll..kl] {
                relink(index(y), li);
            }
        } else {
            // Move the last ll - kl items of the left leaf to the right one.
            let m = ll - kl;
            right.slots.copy_within(0..rl, m);
            right.slots[..m].copy_from_slice(&left.slots[kl..ll]);
            for &y in &right.slots[..m] {
                relink(index(y), ri);
            }
        }
        left.len = kl as u32;
        right.len = (total - kl) as u32;
        let sep = right.slots[0];
        self.nodes[parent as usize].slots[s] = sep;
        false
    }

    /// Inner node `c` of `parent` is underfull: as
    /// [`rebalance_leaves`](Self::rebalance_leaves), with the parent's separator
    /// moving down between the two and a new one moving up.
    fn rebalance_inners(&mut self, parent: u32, c: usize) -> bool {
        let p = &self.nodes[parent as usize];
        let s = c.saturating_sub(1);
        let (li, ri, psep) = (p.child(s), p.child(s + 1), p.slots[s]);
        let (left, right) = two_mut(&mut self.nodes, li, ri);
        let (ll, rl) = (left.len as usize, right.len as usize);
        let total = ll + rl;
        // All children and the separators between them, the parent's in the middle.
        let mut seps = [0u128; 2 * INNER_CAP - 1];
        let mut child = [NIL; 2 * INNER_CAP];
        seps[..ll - 1].copy_from_slice(left.seps());
        seps[ll - 1] = psep;
        seps[ll..total - 1].copy_from_slice(right.seps());
        for (i, ch) in child[..ll].iter_mut().enumerate() {
            *ch = left.child(i);
        }
        for (i, ch) in child[ll..total].iter_mut().enumerate() {
            *ch = right.child(i);
        }
        if total <= INNER_CAP / 2 {
            left.set_inner(&seps[..total - 1], &child[..total]);
            self.release(ri);
            self.remove_child(parent, s);
            return true;
        }
        let kl = total / 2;
        left.set_inner(&seps[..kl - 1], &child[..kl]);
        right.set_inner(&seps[kl..total - 1], &child[kl..total]);
        self.nodes[parent as usize].slots[s] = seps[kl - 1];
        false
    }

    /// Removes separator `s` and child `s + 1` from inner node `n`.
    fn remove_child(&mut self, n: u32, s: usize) {
        let node = &mut self.nodes[n as usize];
        let len = node.len as usize;
        node.slots.copy_within(s + 1..len - 1, s);
        for i in s + 1..len - 1 {
            let v = node.child(i + 1);
            node.set_child(i, v);
        }
        node.len -= 1;
    }
}

/// The items of a set in order.
pub struct Iter<'a> {
    nodes: &'a [Node],
    leaf: u32,
    pos: u32,
}

impl Iterator for Iter<'_> {
    type Item = u128;
    #[inline]
    fn next(&mut self) -> Option<u128> {
        while self.leaf != NIL {
            let l = &self.nodes[self.leaf as usize];
            if self.pos < l.len {
                let x = l.slots[self.pos as usize];
                self.pos += 1;
                return Some(x);
            }
            self.leaf = l.next;
            self.pos = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlespace::rng::Rng;
    use std::collections::{BTreeSet, HashMap};

    /// Every item's hint is the leaf holding it.
    fn check_hints(s: &OrdSet, a: &Arena, hints: &HashMap<u32, u32>) {
        let mut leaf = s.first;
        while leaf != NIL {
            let l = &a.nodes[leaf as usize];
            for &x in l.items() {
                assert_eq!(hints.get(&index(x)), Some(&leaf), "hint of {x:x}");
            }
            leaf = l.next;
        }
    }

    /// Random insertions, removals and replacements (with right, stale and wrong
    /// hints) checked against `BTreeSet`, on two sets sharing an arena.
    fn run(seed: u64, steps: usize, keys: u64, max: usize) {
        let mut a = Arena::default();
        let mut sets = [OrdSet::default(), OrdSet::default()];
        let mut models = [BTreeSet::new(), BTreeSet::new()];
        let mut hints: HashMap<u32, u32> = HashMap::new();
        let mut rng = Rng::new(seed);
        let mut seq = 0u32;
        for step in 0..steps {
            let w = rng.below(2) as usize;
            let (s, m) = (&mut sets[w], &mut models[w]);
            let mut relink = |i: u32, l: u32| {
                hints.insert(i, l);
            };
            let op = rng.below(100);
            let grow = m.len() < max && op < 40;
            if grow || m.is_empty() {
                seq += 1;
                // The index is unique (as an entry's is); keys repeat.
                let x = pack(rng.below(keys), seq, seq);
                s.insert(&mut a, x, &mut relink);
                m.insert(x);
                continue;
            }
            let hint_for = |rng: &mut Rng, hints: &HashMap<u32, u32>, x: u128| match rng.below(4) {
                0 => rng.below(a.nodes.len() as u64 + 2) as u32,
                1 => NIL,
                _ => hints[&index(x)],
            };
            if op < 45 {
                // A miss, with any hint.
                let x = pack(rng.below(keys), seq + 1, seq + 1);
                let hint = rng.below(a.nodes.len() as u64 + 2) as u32;
                assert!(!s.remove(&mut a, x, hint, &mut |_, _| {}));
                assert!(!s.replace(&mut a, x, hint, x + 1, &mut |_, _| {}));
                continue;
            }
            let k = rng.below(m.len() as u64) as usize;
            let x = *m.iter().nth(k).unwrap();
            let hint = hint_for(&mut rng, &hints, x);
            if op < 85 {
                // Move an item (a re-registration with a new load).
                seq += 1;
                let y = pack(rng.below(keys), seq, index(x));
                let ok = s.replace(&mut a, x, hint, y, &mut |i, l| {
                    hints.insert(i, l);
                });
                assert!(ok, "step {step}");
                m.remove(&x);
                m.insert(y);
            } else {
                let ok = s.remove(&mut a, x, hint, &mut |i, l| {
                    hints.insert(i, l);
                });
                assert!(ok, "step {step}");
                m.remove(&x);
                hints.remove(&index(x));
            }
            if step % 97 == 0 || s.len() < 80 {
                s.check(&a);
                check_hints(s, &a, &hints);
                assert!(s.iter(&a).eq(m.iter().copied()), "step {step}");
                assert_eq!(s.first(&a), m.first().copied());
            }
        }
        for (s, m) in sets.iter_mut().zip(&models) {
            s.check(&a);
            check_hints(s, &a, &hints);
            assert!(s.iter(&a).eq(m.iter().copied()));
            // Emptying the set (in random order, so that inner nodes underflow
            // everywhere).
            let mut v: Vec<u128> = m.iter().copied().collect();
            for i in (1..v.len()).rev() {
                v.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for (i, &x) in v.iter().enumerate() {
                let hint = hints[&index(x)];
                assert!(s.remove(&mut a, x, hint, &mut |i, l| {
                    hints.insert(i, l);
                }));
                if i % 1009 == 0 {
                    s.check(&a);
                    check_hints(s, &a, &hints);
                }
            }
            assert_eq!(s.len(), 0);
            s.check(&a);
        }
        // Every node is back on the free list.
        assert_eq!(a.free_count(), a.nodes.len());
    }

    #[test]
    fn matches_btreeset_small() {
        for seed in 0..30 {
            run(seed, 3_000, 1 << 40, 70);
        }
    }

    #[test]
    fn matches_btreeset_ties_and_depth() {
        // Few keys: long runs of equal keys spanning leaves; large sets: 4 levels.
        run(100, 80_000, 4, 20_000);
        run(101, 80_000, 1 << 60, 20_000);
    }

    #[test]
    fn rebuild() {
        let mut a = Arena::default();
        let mut s = OrdSet::default();
        let mut hints = HashMap::new();
        let items: Vec<u128> = (0..5_000u32).map(|i| pack(i as u64 / 3, i, i)).collect();
        s.rebuild(&mut a, &items, &mut |i, l| {
            hints.insert(i, l);
        });
        s.check(&a);
        check_hints(&s, &a, &hints);
        assert!(s.iter(&a).eq(items.iter().copied()));
        // Ascending appends fill the leaves to more than 3/4.
        let leaves = a.nodes.iter().filter(|n| n.next != INNER).count();
        assert!(leaves <= items.len().div_ceil(LEAF_CAP + 1 - LEAF_MIN));
        s.rebuild(&mut a, &items[..10], &mut |_, _| {});
        s.check(&a);
        assert_eq!(s.len(), 10);
        // The first tree's nodes were freed, and the second reused them.
        assert_eq!(a.free_count() + 1, a.nodes.len());
    }

    #[test]
    fn nodes_are_eight_cache_lines() {
        assert_eq!(std::mem::size_of::<Node>(), 512);
        assert_eq!(std::mem::align_of::<Node>(), 64);
    }

    #[test]
    fn packed_children() {
        let mut n = Node::FREE;
        let seps: Vec<u128> = (1..INNER_CAP as u128).map(|i| i * 10).collect();
        let children: Vec<u32> = (0..INNER_CAP as u32).map(|i| u32::MAX - 7 * i).collect();
        n.set_inner(&seps, &children);
        assert_eq!(n.seps(), &seps[..]);
        for (c, &v) in children.iter().enumerate() {
            assert_eq!(n.child(c), v);
        }
    }

    #[test]
    fn bounds() {
        let s = [1u128, 3, 3, 5];
        for x in 0..7u128 {
            assert_eq!(lower_bound(&s, x), s.iter().filter(|&&y| y < x).count());
            assert_eq!(upper_bound(&s, x), s.iter().filter(|&&y| y <= x).count());
        }
        assert_eq!(lower_bound(&[], 3), 0);
    }
}
