//! Shared by `tests/python_bindings.rs` and `tests/go_bindings.rs`: where this
//! build's library is, and running a tool with a deadline.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `rserpool` binary this `cargo test` built.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rserpool"))
}

#[path = "../common/mod.rs"]
pub mod common;

/// The directory holding the librserpool.so this `cargo test` built (see
/// `tests/common::lib_dir`: target/<profile>/deps first).
pub fn lib_dir() -> PathBuf {
    common::lib_dir()
}

/// What a finished command left.
pub struct Output {
    pub ok: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn report(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Run `cmd` in its own process group; after `limit` the whole group
/// (including registrars the tool started) is killed and the test fails.
pub fn run(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            break st;
        }
        if Instant::now() >= end {
            let pgid = libc::pid_t::try_from(child.id()).unwrap();
            // SAFETY: kill(2) on the process group of our own child, which is
            // not reaped yet (so its pid, the group id, cannot be reused).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "{what} did not finish in {limit:?}; killed.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                t_out.join().unwrap_or_default(),
                t_err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        ok: status.success(),
        status: format!("{what}: {status}"),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}
