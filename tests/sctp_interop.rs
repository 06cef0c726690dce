//! The SCTP suite in a VM: `scripts/sctp-vm` boots a kernel with SCTP and runs
//! `tests/interop/run.sh` inside, which runs this crate's SCTP tests for real
//! and checks interoperability with RSPLIB (rspserver, rspterminal, and
//! rspregistrar over ENRP, takeovers both ways) and the wire format with
//! tshark. Slow (minutes), needs root and the Debian archive,
//! so it runs only with RSERPOOL_SCTP_VM=1 (.ci/run sets it). The capture the
//! suite leaves in target/interop/cap.pcap is checked with tshark on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

/// The newest test executable in `dir` named `prefix-HASH` whose test list
/// contains `marker` (several builds, and the lib and bin test binaries of
/// one package, share a prefix).
fn test_binary(dir: &Path, prefix: &str, marker: &str) -> Option<PathBuf> {
    let mut found: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(prefix)
                .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).find(|p| {
        Command::new(p)
            .args(["--list", "sctp"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(marker))
    })
}

#[test]
fn sctp_suite_in_a_vm() {
    if std::env::var("RSERPOOL_SCTP_VM").as_deref() != Ok("1") {
        eprintln!(
            "skipping: the SCTP VM suite runs only with RSERPOOL_SCTP_VM=1 \
             (boots a QEMU guest with kernel SCTP; takes minutes)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut tests = Vec::new();
    for (prefix, marker) in [
        ("rserpool-", "runtime::sctp::tests"),
        (
            "sctp_registrar-",
            "register_and_resolve_over_multihomed_sctp",
        ),
        ("session_runtime-", "sctp_echo_and_failover"),
        (
            "cli_tools-",
            "sctp_pu_waits_for_the_replies_to_lines_that_waited_for_a_pe",
        ),
    ] {
        match test_binary(&deps, prefix, marker) {
            Some(p) => tests.push(p.display().to_string()),
            None => panic!(
                "no built test binary {prefix}* with {marker}: run `cargo test --no-run` first"
            ),
        }
    }
    let started = Instant::now();
    let status = Command::new(root.join("scripts/sctp-vm"))
        .current_dir(root)
        .args(["--apt", "rsplib-registrar", "--apt", "rsplib-tools"])
        .args(["--apt", "tshark", "--"])
        .arg("env")
        .arg(format!("RSERPOOL_BIN={}", env!("CARGO_BIN_EXE_rserpool")))
        .arg(format!("RSERPOOL_SCTP_TESTS={}", tests.join(" ")))
        .args(["bash", "tests/interop/run.sh"])
        .status()
        .expect("run scripts/sctp-vm");
    eprintln!(
        "SCTP VM suite: {:.0} s in the VM (boot included)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "the SCTP suite failed ({status}); logs in target/interop"
    );
    // tshark takes minutes to start in the emulated guest: check the capture here.
    let checked = Command::new("bash")
        .current_dir(root)
        .arg("tests/interop/check-capture.sh")
        // ASAP keep-alives with rspregistrar, our PU's session traffic with
        // RSPLIB's PEs (cookie, cookie echo, ping-pong DATA), IPv6.
        .args(["--expect-file", "tests/interop/capture-expect.txt"])
        .arg("target/interop/cap.pcap")
        // Every ENRP message type but ENRP_ERROR (10): the suite runs the
        // start-up, audit, update and both takeovers with rspregistrar.
        .args(["1", "2", "3", "4", "5", "6", "7", "8", "9"])
        .status()
        .expect("run tests/interop/check-capture.sh");
    eprintln!(
        "SCTP VM suite: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    assert!(
        checked.success(),
        "the capture check failed: target/interop/cap.pcap"
    );
}
