//! Builds every example in `examples-c/` with its own Makefile (shared and static)
//! against the freshly built library, and runs the ones that need no network.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::lib_dir;

fn make(dir: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("make")
        .arg("-B")
        .arg("-C")
        .arg(root.join("examples-c").join(dir))
        .arg(format!("LIBDIR={}", lib_dir().display()))
        .output()
        .expect("make runs");
    assert!(
        o.status.success(),
        "make in examples-c/{dir} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn decode_example_builds_and_decodes() {
    make("decode");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-c/decode");
    for exe in ["decode", "decode-static"] {
        let o = Command::new(root.join(exe))
            .args(["0500000b", "00090007", "61626300"])
            .output()
            .expect("example runs");
        assert!(
            o.status.success(),
            "{exe}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("\"type\":\"ASAP_HANDLE_RESOLUTION\""), "{out}");
        assert!(out.contains("\"pool_handle\":\"abc\""), "{out}");

        let o = Command::new(root.join(exe))
            .args(["0500000b", "00090002", "61626300"])
            .output()
            .expect("example runs");
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("malformed message at byte 4"));
    }
}
