//! Runs the Python bindings' pytest suite (bindings/python/tests) against the
//! library and registrar binary this `cargo test` built.
//!
//! Needs python3 with pytest (CI: `apt-get install -y python3 python3-pytest`
//! or `pip install pytest`). Missing tools fail the test with that advice
//! instead of skipping it, so CI cannot pass without running the suite.
//! `RSERPOOL_PYTHON` names another interpreter.

mod bindings_util;

use std::process::Command;
use std::time::Duration;

use bindings_util::{bin, lib_dir, manifest_dir, run};

#[test]
fn python_bindings_pytest() {
    let python = std::env::var("RSERPOOL_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python).args(["-c", "import pytest"]).output() {
        Err(e) => panic!(
            "cannot run {python} ({e}): the Python binding tests need python3 and pytest \
             (apt-get install -y python3 python3-pytest)"
        ),
        Ok(o) if !o.status.success() => panic!(
            "{python} has no pytest: install it (pip install pytest, or apt-get install -y \
             python3-pytest)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "bindings/python/tests",
    ])
    .current_dir(manifest_dir())
    .env("RSERPOOL_LIB", lib_dir().join("librserpool.so"))
    .env("RSERPOOL_BIN", bin())
    .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run(cmd, Duration::from_secs(900));
    assert!(out.ok, "pytest failed: {}", out.report());
    // The summary line, visible with `cargo test -- --nocapture`.
    println!("{}", out.stdout.lines().last().unwrap_or_default());
}
