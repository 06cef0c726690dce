//! Replays the committed fuzz corpora (fuzz/corpus/decode_{asap,enrp}) through
//! the decoders with the fuzz targets' assertion, without libFuzzer.

use std::path::Path;

use rserpool::wire::{AsapMessage, EnrpMessage};

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let v: Vec<_> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read(&p).expect("read corpus file"),
            )
        })
        .collect();
    assert!(!v.is_empty(), "{} is empty", dir.display());
    v
}

#[test]
fn asap_corpus() {
    let mut ok = 0;
    for (name, data) in files("decode_asap") {
        if let Ok(d) = AsapMessage::decode(&data) {
            let wire = d.msg.to_bytes();
            assert_eq!(wire.len(), d.msg.encoded_len(), "{name}");
            let again = AsapMessage::decode(&wire).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(again.msg, d.msg, "{name}");
            ok += 1;
        }
    }
    assert!(ok > 0, "no corpus file decodes");
}

#[test]
fn enrp_corpus() {
    let mut ok = 0;
    for (name, data) in files("decode_enrp") {
        if let Ok(d) = EnrpMessage::decode(&data) {
            let wire = d.msg.to_bytes();
            assert_eq!(wire.len(), d.msg.encoded_len(), "{name}");
            let again = EnrpMessage::decode(&wire).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(again.msg, d.msg, "{name}");
            ok += 1;
        }
    }
    assert!(ok > 0, "no corpus file decodes");
}
