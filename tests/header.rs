//! The committed C header must be exactly what cbindgen generates from the sources.

#[test]
fn committed_header_is_fresh() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/rserpool.h"));
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/rserpool.h");
    let committed = std::fs::read_to_string(committed_path).expect("include/rserpool.h exists");
    assert!(
        generated == committed,
        "include/rserpool.h is stale: regenerate it with `RSERPOOL_BLESS_HEADER=1 cargo build` and commit it"
    );
}
