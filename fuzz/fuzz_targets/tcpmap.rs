//! Arbitrary bytes through the TCP mapping's streaming chunk decoder: decoding must
//! not panic, must not depend on how the stream is split, and decoded chunks must
//! re-encode to bytes that decode to the same chunks. The oracle lives in the
//! library so `tests/fuzz_corpus_tcpmap.rs` replays the corpus without libFuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rserpool::wire::tcpmap::fuzz_check(data) {
        panic!("{e}");
    }
});
