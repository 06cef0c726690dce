//! `rserpool decode` end to end: JSON on stdout and exit 0 for good input; one
//! line on stderr naming the byte offset and exit 1 for bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const V1: &str = "01000044 0009000c 4563686f 506f6f6c 000a0034 12345678 00000000 0000012c 00040018 13880000 00010008 0a000001 00010008 0a000101 0008000c 40000001 40000000";
const V9: &str = "0101002c cafebabe 00000000 000f0006 ffff0000 000b0018 cafebabe 00040010 26ad0000 00010008 0a000009";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rserpool"))
}

fn run_args(args: &[&str]) -> Output {
    bin().args(args).output().expect("run rserpool")
}

fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut c = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rserpool");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("stdout is JSON")
}

fn check_v1(v: &serde_json::Value) {
    assert_eq!(v["type"], "ASAP_REGISTRATION");
    assert_eq!(v["flags"]["raw"], 0);
    assert_eq!(v["pool_handle"], "EchoPool");
    let pe = &v["pool_element"];
    assert_eq!(pe["id"], 0x12345678);
    assert_eq!(pe["reg_life"], 300);
    assert_eq!(pe["policy"]["name"], "lu");
    assert_eq!(pe["policy"]["load"], 0x40000000);
    assert_eq!(pe["user_transport"]["protocol"], "sctp");
    assert_eq!(pe["user_transport"]["port"], 5000);
    assert_eq!(
        pe["user_transport"]["addresses"],
        serde_json::json!(["10.0.0.1", "10.0.1.1"])
    );
    assert_eq!(pe["user_transport"]["url"], "sctp://10.0.0.1,10.0.1.1:5000");
}

#[test]
fn decode_from_argument() {
    let compact: String = V1.split_whitespace().collect();
    check_v1(&json(&run_args(&["decode", &compact])));
    // Words as separate arguments and a 0x prefix.
    let mut args = vec!["decode"];
    args.extend(V1.split_whitespace());
    check_v1(&json(&run_args(&args)));
    check_v1(&json(&run_args(&["decode", &format!("0x{compact}")])));
}

#[test]
fn decode_from_stdin() {
    check_v1(&json(&run_stdin(&["decode"], &format!("{V1}\n"))));
    let v = json(&run_stdin(&["decode", "--ppid", "12"], V9));
    assert_eq!(v["type"], "ENRP_PRESENCE");
    assert_eq!(v["flags"]["reply_required"], true);
    assert_eq!(v["sender"], 0xCAFEBABEu32);
    assert_eq!(v["checksum"], 0xFFFF);
    assert_eq!(v["server_info"]["transport"]["port"], 9901);
}

fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let e = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("rserpool decode: "), "{e}");
    e
}

#[test]
fn malformed_message() {
    let e = one_line_error(&run_args(&["decode", "0500000b 00090002 61626300"]));
    assert!(
        e.contains("malformed message at byte 4: parameter length 2 is below 4"),
        "{e}"
    );
    let e = one_line_error(&run_args(&["decode", "0500000b 000900"]));
    assert!(e.contains("at byte 2"), "{e}");
    // ENRP bytes decoded as ENRP with a short length.
    let e = one_line_error(&run_args(&["decode", "--ppid", "12", "07000008 cafebabe"]));
    assert!(e.contains("at byte 2"), "{e}");
}

#[test]
fn malformed_hex() {
    let e = one_line_error(&run_args(&["decode", "0500zz0b"]));
    assert!(e.contains("character 4"), "{e}");
    let e = one_line_error(&run_stdin(&["decode"], "050"));
    assert!(e.contains("odd number"), "{e}");
}
