//! `rserpool decode`: decode one ASAP or ENRP message given as hex and print
//! it as pretty JSON.

use std::io::Read;

use rserpool::wire::{json, AsapMessage, EnrpMessage};

/// Arguments of `rserpool decode`.
#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// The message as hex (whitespace ignored, optional 0x prefix; several
    /// arguments are joined). Read from stdin when absent.
    pub hex: Vec<String>,
    /// SCTP payload protocol identifier: 11 = ASAP, 12 = ENRP.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(11..=12))]
    pub ppid: u32,
}

/// Parse hex text: whitespace is ignored, one leading `0x`/`0X` is allowed.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim_start();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let mut digits = Vec::with_capacity(t.len());
    for (i, c) in t.char_indices() {
        if c.is_whitespace() {
            continue;
        }
        match c.to_digit(16) {
            Some(d) => digits.push(d as u8),
            None => return Err(format!("invalid hex digit {c:?} at character {i}")),
        }
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "odd number of hex digits ({}): byte {} is incomplete",
            digits.len(),
            digits.len() / 2
        ));
    }
    Ok(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// Run the command; returns the exit status (0 ok, 1 malformed input).
pub fn run(args: DecodeArgs) -> i32 {
    let text = if args.hex.is_empty() {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("rserpool decode: cannot read stdin: {e}");
            return 1;
        }
        s
    } else {
        args.hex.join(" ")
    };
    let bytes = match parse_hex(&text) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rserpool decode: bad hex: {e}");
            return 1;
        }
    };
    let value = if args.ppid == 12 {
        EnrpMessage::decode(&bytes).map(|d| json::enrp_decoded(&d))
    } else {
        AsapMessage::decode(&bytes).map(|d| json::asap_decoded(&d))
    };
    match value {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            0
        }
        Err(e) => {
            eprintln!("rserpool decode: {e}");
            1
        }
    }
}
