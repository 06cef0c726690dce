//! Generates the C header `rserpool.h` with cbindgen.
//!
//! The header is written to `$OUT_DIR/rserpool.h` on every build. The committed
//! copy in `include/` is only rewritten when `RSERPOOL_BLESS_HEADER=1` is set (or
//! when it does not exist yet); `tests/header.rs` fails when the two differ, so a
//! stale committed header cannot go unnoticed.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-env-changed=RSERPOOL_BLESS_HEADER");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let generated = out_dir.join("rserpool.h");
    bindings.write_to_file(&generated);

    let committed = crate_dir.join("include/rserpool.h");
    let bless = env::var("RSERPOOL_BLESS_HEADER").is_ok_and(|v| v == "1");
    if bless || !committed.exists() {
        fs::create_dir_all(crate_dir.join("include")).expect("include/ can be created");
        fs::copy(&generated, &committed).expect("include/rserpool.h can be written");
    }
}
