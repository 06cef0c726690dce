//! A Fenwick (binary indexed) tree of u64 weights over a dense array that grows and
//! shrinks at its end: O(log n) update, push, pop, total and weighted search.

/// Prefix sums over `weights[0..len]`, stored implicitly.
#[derive(Debug, Clone, Default)]
pub struct Fenwick {
    /// `tree[i-1]` holds the sum over `(i - lowbit(i), i]` (1-based `i`).
    tree: Vec<u64>,
}

#[inline]
fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Fenwick {
    /// Sum of positions `0..i`.
    pub fn prefix(&self, mut i: usize) -> u64 {
        let mut s = 0u64;
        while i > 0 {
            s = s.wrapping_add(self.tree[i - 1]);
            i -= lowbit(i);
        }
        s
    }

    /// Sum of all positions.
    pub fn total(&self) -> u64 {
        self.prefix(self.tree.len())
    }

    /// Adds `delta` (two's-complement, so subtraction works) at position `pos`.
    pub fn add(&mut self, pos: usize, delta: u64) {
        let mut i = pos + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] = self.tree[i - 1].wrapping_add(delta);
            i += lowbit(i);
        }
    }

    /// Appends a position with weight `w`.
    pub fn push(&mut self, w: u64) {
        let i = self.tree.len() + 1;
        // tree[i] = w + sum over (i - lowbit(i), i - 1].
        let s = self
            .prefix(i - 1)
            .wrapping_sub(self.prefix(i - lowbit(i)))
            .wrapping_add(w);
        self.tree.push(s);
    }

    /// Removes the last position (its weight must be set to 0 first, or the caller
    /// accepts that it disappears: no other node includes the last position).
    pub fn pop(&mut self) {
        self.tree.pop();
    }

    /// The position `p` with `prefix(p) <= r < prefix(p + 1)`; `r < total()`.
    pub fn find(&self, mut r: u64) -> usize {
        let n = self.tree.len();
        let mut pos = 0usize;
        let mut step = if n == 0 {
            0
        } else {
            1usize << (usize::BITS - 1 - n.leading_zeros())
        };
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next - 1] <= r {
                pos = next;
                r -= self.tree[next - 1];
            }
            step >>= 1;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        let mut f = Fenwick::default();
        let mut w: Vec<u64> = Vec::new();
        let mut rng = crate::handlespace::rng::Rng::new(3);
        for step in 0..3000 {
            match rng.below(4) {
                0 | 1 => {
                    let x = rng.below(100);
                    f.push(x);
                    w.push(x);
                }
                2 if !w.is_empty() => {
                    let p = rng.below(w.len() as u64) as usize;
                    let x = rng.below(100);
                    f.add(p, x.wrapping_sub(w[p]));
                    w[p] = x;
                }
                _ if !w.is_empty() => {
                    f.pop();
                    w.pop();
                }
                _ => {}
            }
            let total: u64 = w.iter().sum();
            assert_eq!(f.total(), total, "step {step}");
            if total > 0 {
                let r = rng.below(total);
                let p = f.find(r);
                let before: u64 = w[..p].iter().sum();
                assert!(before <= r && r < before + w[p]);
            }
        }
    }
}
