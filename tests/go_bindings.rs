//! Vets and tests the Go binding (bindings/go) against the library and
//! registrar binary this `cargo test` built, then runs its example against a
//! registrar process.
//!
//! Needs Go with cgo and a C compiler (CI: `apt-get install -y golang-go gcc`).
//! A missing `go` fails the test with that advice instead of skipping it.
//! The package links `-lrserpool`; CGO_LDFLAGS puts this build's library
//! directory first (and in the rpath), so the tests use the library cargo just
//! built. Go runs offline (GOPROXY=off, standard library only); its build
//! cache is target/go-cache unless GOCACHE is set.

mod bindings_util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bindings_util::{bin, lib_dir, manifest_dir, run};

fn go_dir() -> PathBuf {
    manifest_dir().join("bindings").join("go")
}

fn go(args: &[&str]) -> Command {
    let lib = lib_dir();
    let mut cmd = Command::new("go");
    cmd.args(args)
        .current_dir(go_dir())
        .env("CGO_ENABLED", "1")
        .env("LD_LIBRARY_PATH", &lib)
        .env(
            "CGO_LDFLAGS",
            format!("-L{0} -Wl,-rpath,{0}", lib.display()),
        )
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("RSERPOOL_BIN", bin());
    if std::env::var_os("GOCACHE").is_none() {
        let target = lib.parent().unwrap_or(Path::new(".")).to_path_buf();
        cmd.env("GOCACHE", target.join("go-cache"));
    }
    cmd
}

fn check_go() {
    match Command::new("go").arg("version").output() {
        Err(e) => panic!(
            "cannot run `go` ({e}): the Go binding tests need Go with cgo \
             (apt-get install -y golang-go gcc)"
        ),
        Ok(o) if !o.status.success() => panic!(
            "`go version` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

fn must(cmd: Command) -> String {
    let out = run(cmd, Duration::from_secs(900));
    assert!(out.ok, "{}", out.report());
    out.stdout
}

#[test]
fn go_bindings() {
    check_go();
    must(go(&["vet", "./..."]));
    let tested = must(go(&["test", "-count=1", "./..."]));
    println!("{tested}");

    // The example, built and run against a registrar process.
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rserpool-go-example");
    must(go(&["build", "-o", exe.to_str().unwrap(), "./example"]));
    let reg = bindings_util::common::Proc::start(&[]);
    let mut cmd = Command::new(&exe);
    cmd.env("LD_LIBRARY_PATH", lib_dir());
    cmd.args([
        "-registrar",
        &reg.url,
        "-pool",
        "go-example",
        "-message",
        "ping",
    ]);
    let out = must(cmd);
    assert!(out.contains("echo: ping"), "example output:\n{out}");
}
