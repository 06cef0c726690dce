//! The text form of policies (`--policy` of `rserpool pe`): every policy
//! parses from its spec and prints back to it; bad specs are refused with a
//! message, never a panic.

use proptest::prelude::*;
use rserpool::wire::Policy;

fn p(s: &str) -> Result<Policy, String> {
    s.parse()
}

#[test]
fn every_standard_policy() {
    assert_eq!(p("rr"), Ok(Policy::RoundRobin));
    assert_eq!(p("RoundRobin"), Ok(Policy::RoundRobin));
    assert_eq!(p("wrr:5"), Ok(Policy::WeightedRoundRobin { weight: 5 }));
    assert_eq!(p("wrr"), Ok(Policy::WeightedRoundRobin { weight: 1 }));
    assert_eq!(p("rand"), Ok(Policy::Random));
    assert_eq!(p("wrand:0x10"), Ok(Policy::WeightedRandom { weight: 16 }));
    assert_eq!(p("prio:3"), Ok(Policy::Priority { priority: 3 }));
    assert_eq!(p("lu"), Ok(Policy::LeastUsed { load: 0 }));
    assert_eq!(p("lu:25%"), Ok(Policy::LeastUsed { load: 0x4000_0000 }));
    assert_eq!(p("lu:100%"), Ok(Policy::LeastUsed { load: u32::MAX }));
    assert_eq!(
        p("lud:10:20"),
        Ok(Policy::LeastUsedDegradation {
            load: 10,
            degradation: 20
        })
    );
    assert_eq!(
        p("plu:50%:1"),
        Ok(Policy::PriorityLeastUsed {
            load: 0x8000_0000,
            degradation: 1
        })
    );
    assert_eq!(p("rlu:7"), Ok(Policy::RandomizedLeastUsed { load: 7 }));
    // By number: standard types take their typed form.
    assert_eq!(p("0x40000001:00000009"), Ok(Policy::LeastUsed { load: 9 }));
    assert_eq!(p("0x1"), Ok(Policy::RoundRobin));
    assert_eq!(
        p("0xb0001001:0000000100000002"),
        Ok(Policy::Other {
            policy_type: 0xb000_1001,
            data: vec![0, 0, 0, 1, 0, 0, 0, 2]
        })
    );
}

#[test]
fn bad_specs_say_why() {
    for bad in [
        "",
        "fifo",
        "rr:1",
        "wrr:x",
        "wrr:1:2",
        "lu:101%",
        "lu:-1",
        "lu:4294967296",
        "lud:1:2:3",
        "0xzz",
        "0x40000001",
        "0x40000001:0000",
        "0x5:abc",
    ] {
        let e = p(bad).expect_err(bad);
        assert!(e.contains("policy"), "{bad}: {e}");
    }
}

fn any_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::RoundRobin),
        Just(Policy::Random),
        any::<u32>().prop_map(|weight| Policy::WeightedRoundRobin { weight }),
        any::<u32>().prop_map(|weight| Policy::WeightedRandom { weight }),
        any::<u32>().prop_map(|priority| Policy::Priority { priority }),
        any::<u32>().prop_map(|load| Policy::LeastUsed { load }),
        any::<u32>().prop_map(|load| Policy::RandomizedLeastUsed { load }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(load, degradation)| Policy::LeastUsedDegradation { load, degradation }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(load, degradation)| Policy::PriorityLeastUsed { load, degradation }),
        (
            0x8000_0000u32..,
            proptest::collection::vec(any::<u8>(), 0..12)
        )
            .prop_map(|(policy_type, data)| Policy::Other { policy_type, data }),
    ]
}

proptest! {
    #[test]
    fn spec_round_trips(policy in any_policy()) {
        prop_assert_eq!(p(&policy.spec()), Ok(policy));
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,40}") {
        let _ = p(&s);
    }
}
