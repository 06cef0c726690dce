//! Client configuration: the ASAP timers and thresholds of RFC 5352 §7 with
//! their defaults, the choices the RFC leaves open, and RSPLIB's profile
//! (digest §8.1, §8.3).

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::handlespace::RegLifeUnit;
pub use crate::registrar::RateLimit;

/// How T4 (re-registration interval) follows from the Registration Life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T4Rule {
    /// RFC 5352 §7: `min(max, life − margin)`. For short lives where
    /// `life − margin` would leave less than half the life, `life / 2` is used
    /// instead (a 30 s life re-registers every 15 s, not every 10 s, and a
    /// 10 s life every 5 s instead of never). An infinite life (−1) gives `max`.
    Rfc {
        /// The 10-minute ceiling.
        max: Duration,
        /// The 20-second head start before the life runs out.
        margin: Duration,
    },
    /// `life / n` (RSPLIB registers with a life of 3 × its interval: n = 3).
    /// An infinite life gives 10 minutes.
    LifeFraction(u32),
    /// A fixed interval whatever the life.
    Fixed(Duration),
}

impl T4Rule {
    /// The re-registration interval for a registration `life` (`None` =
    /// infinite). Never below 1 ms.
    pub fn interval(&self, life: Option<Duration>) -> Duration {
        const TEN_MIN: Duration = Duration::from_secs(600);
        let d = match (*self, life) {
            (T4Rule::Fixed(d), _) => d,
            (T4Rule::Rfc { max, .. }, None) => max,
            (T4Rule::LifeFraction(_), None) => TEN_MIN,
            (T4Rule::Rfc { max, margin }, Some(life)) => {
                max.min(life.saturating_sub(margin).max(life / 2))
            }
            (T4Rule::LifeFraction(n), Some(life)) => life / n.max(1),
        };
        d.max(Duration::from_millis(1))
    }
}

/// Every timer, threshold and limit of the ASAP client.
///
/// Defaults follow RFC 5352 §7 where it gives a value; where it gives none the
/// choice is documented on the field. [`ClientConfig::rsplib_profile`] gives
/// RSPLIB's faster values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Registrars known from configuration (never expire). More can be added
    /// with [`Client::add_registrar`](super::Client::add_registrar) or learned
    /// from ASAP_SERVER_ANNOUNCE.
    pub registrars: Vec<SocketAddr>,
    /// T1-ENRPrequest: guards a handle resolution. Default 15 s.
    pub t1_request: Duration,
    /// T2-registration: guards a registration. Default 30 s.
    pub t2_registration: Duration,
    /// T3-deregistration: guards a deregistration. Default 30 s.
    pub t3_deregistration: Duration,
    /// T4-reregistration. Default [`T4Rule::Rfc`] with 10 min and 20 s.
    pub t4_reregistration: T4Rule,
    /// T5-Serverhunt: initial length of a hunt round, doubled after each
    /// round up to [`retran_max`](Self::retran_max). Default 10 s.
    pub t5_server_hunt: Duration,
    /// T7-ENRPoutdate: lifetime of a registrar address learned from an
    /// announce. Default 5 s.
    pub t7_outdate: Duration,
    /// RETRAN-MAX: the ceiling of T5. Default 60 s.
    pub retran_max: Duration,
    /// MAX-REG-ATTEMPT: registration attempts (each guarded by T2) before the
    /// client gives up; also bounds deregistration attempts. Default 2.
    pub max_reg_attempt: u32,
    /// MAX-REQUEST-RETRANSMIT: re-sends of a handle resolution after T1
    /// expiry before it fails with a timeout. Default 2.
    pub max_request_retransmit: u32,
    /// Registrars tried at once during a hunt (SH1: never more than 3).
    /// Default 3; values above 3 are used as 3, 0 as 1.
    pub hunt_fanout: usize,
    /// stale_cache_value: age after which a cached resolution is stale. The
    /// RFC gives no value. Default 1 s: a busy pool user asks the registrar at
    /// most about once a second per pool, and load-based policies still see
    /// recent loads. Pools with an accepted subscription stay fresh (the
    /// registrar pushes every change).
    pub stale_cache: Duration,
    /// Unit of the Registration Life field. Default seconds (RFC).
    pub reg_life_unit: RegLifeUnit,
    /// Items asked for in handle resolutions that give none (`None`: no
    /// Handle Resolution option, the registrar's default). Default `None`.
    pub default_items: Option<u32>,
    /// How long one unreachability incident lasts: a reported PE is not
    /// reported again nor selected again for this long, unless a resolution
    /// stops listing it first (then the incident is over). The RFC says "at
    /// most once per incident" and gives no length. Default 10 s.
    pub unreachable_holdoff: Duration,
    /// Rate limit on ASAP_ENDPOINT_UNREACHABLE sent (RFC 5355 §2.13); reports
    /// over it are not sent (the PE is still marked unusable locally).
    /// Default 10/s, burst 10.
    pub unreachable_rate: RateLimit,
    /// Reports kept while there is no home registrar; beyond, the oldest are
    /// dropped. Default 64.
    pub max_queued_reports: usize,
    /// Port assumed for an announce without transport parameters: `None` =
    /// the UDP source port of the announce (RSPLIB clients, digest §12 #21),
    /// `Some(p)` = that port (RFC 5352: 3863). Default `Some(3863)`.
    pub announce_default_port: Option<u16>,
    /// Most registrar addresses learned from announces (announces are
    /// unauthenticated and may be forged in floods); further new addresses are
    /// ignored until some expire. Default 32.
    pub max_announced: usize,
    /// Fill the Home ENRP Server Identifier of registrations with the home's
    /// id when known (RSPLIB does, digest §15); the RFC has PEs send 0.
    /// Default false.
    pub send_home_id: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            registrars: Vec::new(),
            t1_request: Duration::from_secs(15),
            t2_registration: Duration::from_secs(30),
            t3_deregistration: Duration::from_secs(30),
            t4_reregistration: T4Rule::Rfc {
                max: Duration::from_secs(600),
                margin: Duration::from_secs(20),
            },
            t5_server_hunt: Duration::from_secs(10),
            t7_outdate: Duration::from_secs(5),
            retran_max: Duration::from_secs(60),
            max_reg_attempt: 2,
            max_request_retransmit: 2,
            hunt_fanout: 3,
            stale_cache: Duration::from_secs(1),
            reg_life_unit: RegLifeUnit::Seconds,
            default_items: None,
            unreachable_holdoff: Duration::from_secs(10),
            unreachable_rate: RateLimit {
                per_sec: 10,
                burst: 10,
            },
            max_queued_reports: 64,
            announce_default_port: Some(3863),
            max_announced: 32,
            send_home_id: false,
        }
    }
}

impl ClientConfig {
    /// RSPLIB's client behaviour (digest §8.3, §12, §15): Registration Life in
    /// milliseconds and re-registration every third of it, request and
    /// response timeouts of 3 s, registrar connect timeout 7.5 s, one retry
    /// ("max trials 1" read as one re-send), announce addresses kept 5 s and
    /// taken with the announce's source port, the home id filled in.
    pub fn rsplib_profile() -> Self {
        ClientConfig {
            t1_request: Duration::from_secs(3),
            t2_registration: Duration::from_secs(3),
            t3_deregistration: Duration::from_secs(3),
            t4_reregistration: T4Rule::LifeFraction(3),
            t5_server_hunt: Duration::from_millis(7500),
            t7_outdate: Duration::from_secs(5),
            max_request_retransmit: 1,
            reg_life_unit: RegLifeUnit::Millis,
            announce_default_port: None,
            send_home_id: true,
            ..ClientConfig::default()
        }
    }

    /// The registration life as a duration (`None` for −1 = infinite; other
    /// negative values count as zero).
    pub fn life(&self, reg_life: i32) -> Option<Duration> {
        if reg_life == -1 {
            return None;
        }
        let v = u64::try_from(reg_life).unwrap_or(0);
        Some(match self.reg_life_unit {
            RegLifeUnit::Seconds => Duration::from_secs(v),
            RegLifeUnit::Millis => Duration::from_millis(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t4_follows_the_rfc_with_a_floor() {
        let rfc = ClientConfig::default().t4_reregistration;
        let s = Duration::from_secs;
        assert_eq!(rfc.interval(None), s(600));
        assert_eq!(rfc.interval(Some(s(3600))), s(600));
        assert_eq!(rfc.interval(Some(s(300))), s(280));
        assert_eq!(rfc.interval(Some(s(60))), s(40));
        assert_eq!(rfc.interval(Some(s(30))), s(15));
        assert_eq!(rfc.interval(Some(s(10))), s(5));
        assert_eq!(rfc.interval(Some(s(0))), Duration::from_millis(1));
        assert_eq!(T4Rule::LifeFraction(3).interval(Some(s(90))), s(30));
        assert_eq!(T4Rule::LifeFraction(0).interval(Some(s(9))), s(9));
        assert_eq!(T4Rule::Fixed(s(7)).interval(None), s(7));
    }

    #[test]
    fn life_units() {
        let c = ClientConfig::default();
        assert_eq!(c.life(-1), None);
        assert_eq!(c.life(-5), Some(Duration::ZERO));
        assert_eq!(c.life(30), Some(Duration::from_secs(30)));
        let r = ClientConfig::rsplib_profile();
        assert_eq!(r.life(90_000), Some(Duration::from_secs(90)));
    }
}
