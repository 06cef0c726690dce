//! Small building blocks of the registrar core: a seeded PRNG, the timer table
//! and token buckets. None reads a clock.

use std::time::Duration;

use super::config::RateLimit;
use crate::time::Time;

/// SplitMix64: small, fast, seedable; plenty for spreading timers and picking
/// random PEs (not for anything secret).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]` (inclusive); `lo` if `hi < lo`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + self.next_u64() % (span + 1)
    }

    /// `d` spread uniformly over ±50 % (RFC 5352 §3.5).
    pub(crate) fn spread(&mut self, d: Duration) -> Duration {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.range(us / 2, us.saturating_add(us / 2)))
    }
}

/// A token bucket in micro-tokens, refilled from `now`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    /// Tokens × 1 000 000.
    level: u64,
    last: Time,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit, now: Time) -> Self {
        TokenBucket {
            limit,
            level: u64::from(limit.burst.max(1)) * MICRO,
            last: now,
        }
    }

    /// Take one token if there is one.
    pub(crate) fn take(&mut self, now: Time) -> bool {
        if self.limit.per_sec == 0 {
            return true;
        }
        let cap = u64::from(self.limit.burst.max(1)) * MICRO;
        let elapsed = now.as_micros().saturating_sub(self.last.as_micros());
        self.last = self.last.max(now);
        // per_sec tokens a second = per_sec micro-tokens a microsecond.
        let refill = elapsed.saturating_mul(u64::from(self.limit.per_sec));
        self.level = self.level.saturating_add(refill).min(cap);
        if self.level >= MICRO {
            self.level -= MICRO;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_within_half() {
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            let d = r.spread(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(15));
        }
        assert_eq!(r.range(5, 5), 5);
        assert_eq!(r.range(6, 5), 6);
    }

    #[test]
    fn bucket_refills() {
        let lim = RateLimit {
            per_sec: 2,
            burst: 2,
        };
        let mut b = TokenBucket::new(lim, Time::ZERO);
        assert!(b.take(Time::ZERO));
        assert!(b.take(Time::ZERO));
        assert!(!b.take(Time::ZERO));
        assert!(b.take(Time::from_millis(500)));
        assert!(!b.take(Time::from_millis(600)));
        let mut u = TokenBucket::new(RateLimit::UNLIMITED, Time::ZERO);
        assert!((0..1000).all(|_| u.take(Time::ZERO)));
    }
}
