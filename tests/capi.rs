//! Builds every C program in `capi-tests/` against the freshly built library, shared
//! and static, with the system C compiler and `-Wall -Wextra -Werror`, and runs it.
//!
//! Set `RSERPOOL_CAPI_VALGRIND=1` to run each program under valgrind (leak check,
//! errors fail the test), `RSERPOOL_CAPI_SANITIZE=1` to build with AddressSanitizer
//! and UndefinedBehaviorSanitizer.
//!
//! Every program gets `RSERPOOL_BIN` (the `rserpool` binary), and
//! `RSERPOOL_FILESERVER` / `RSERPOOL_FILECLIENT`: the programs of
//! `examples-c/file-transfer`, built here first with their Makefile and
//! linked like the test (shared or static), for `file_transfer.c`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::lib_dir;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn c_sources() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("capi-tests"))
        .expect("capi-tests/ exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no C tests found in capi-tests/");
    v
}

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Compiles `src` into `out`, linked against the library as `link` says.
fn compile(src: &Path, out: &Path, static_link: bool) {
    let lib = lib_dir();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(cc);
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
        "-g",
        "-O1",
    ])
    .arg("-I")
    .arg(manifest_dir().join("include"))
    .arg(src)
    .arg("-o")
    .arg(out);
    if env_on("RSERPOOL_CAPI_SANITIZE") {
        cmd.args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]);
    }
    if static_link {
        cmd.arg(lib.join("librserpool.a"))
            .args(["-lpthread", "-ldl", "-lm"]);
    } else {
        cmd.arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lrserpool");
    }
    let o = cmd.output().expect("the C compiler runs");
    assert!(
        o.status.success(),
        "compiling {} failed:\n{}{}",
        src.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds `examples-c/file-transfer` (once per process: both tests share it).
fn file_transfer_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = manifest_dir().join("examples-c").join("file-transfer");
            let o = Command::new("make")
                .arg("-B")
                .arg("-C")
                .arg(&dir)
                .arg(format!("LIBDIR={}", lib_dir().display()))
                .output()
                .expect("make runs");
            assert!(
                o.status.success(),
                "make in examples-c/file-transfer failed:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            dir
        })
        .clone()
}

fn run(exe: &Path, static_link: bool) {
    let mut cmd = if env_on("RSERPOOL_CAPI_VALGRIND") {
        let mut c = Command::new("valgrind");
        c.args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    // cargo puts target/<profile> on the test's LD_LIBRARY_PATH, which the
    // loader searches before the programs' RUNPATH: a librserpool.so left
    // there by an earlier `cargo build` would shadow the one under test.
    cmd.env("LD_LIBRARY_PATH", lib_dir());
    let ft = file_transfer_example();
    let suffix = if static_link { "-static" } else { "" };
    cmd.env("RSERPOOL_BIN", env!("CARGO_BIN_EXE_rserpool"))
        .env(
            "RSERPOOL_FILESERVER",
            ft.join(format!("fileserver{suffix}")),
        )
        .env(
            "RSERPOOL_FILECLIENT",
            ft.join(format!("fileclient{suffix}")),
        );
    let o = cmd.output().expect("the C test runs");
    print!("{}", String::from_utf8_lossy(&o.stdout));
    assert!(
        o.status.success(),
        "{} failed ({}):\n{}{}",
        exe.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn build_and_run_all(static_link: bool) {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(if static_link {
        "capi-static"
    } else {
        "capi-shared"
    });
    std::fs::create_dir_all(&out_dir).expect("tmp dir");
    for src in c_sources() {
        let exe = out_dir.join(src.file_stem().expect("file name"));
        compile(&src, &exe, static_link);
        run(&exe, static_link);
    }
}

#[test]
fn c_tests_against_shared_library() {
    build_and_run_all(false);
}

#[test]
fn c_tests_against_static_library() {
    build_and_run_all(true);
}
