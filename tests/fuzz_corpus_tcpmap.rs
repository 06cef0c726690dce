//! Replays every file in fuzz/corpus/tcpmap through the fuzz target's oracle,
//! so the seed corpus (and any crash reproducer added to it) runs on plain
//! `cargo test`, without libFuzzer or nightly.

use std::fs;
use std::path::Path;

use rserpool::wire::tcpmap::fuzz_check;

#[test]
fn replay_tcpmap_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tcpmap");
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} missing: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("reading corpus directory").path();
        if !path.is_file() {
            continue;
        }
        let data = fs::read(&path).expect("reading corpus file");
        if let Err(e) = fuzz_check(&data) {
            panic!("{}: {e}", path.display());
        }
        count += 1;
    }
    assert!(count > 0, "corpus directory {} is empty", dir.display());
}
