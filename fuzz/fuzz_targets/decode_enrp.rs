//! Decode arbitrary bytes as ENRP; whatever decodes must re-encode to a
//! message that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rserpool::wire::EnrpMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = EnrpMessage::decode(data) {
        let wire = d.msg.to_bytes();
        assert_eq!(wire.len(), d.msg.encoded_len());
        let again = EnrpMessage::decode(&wire).expect("re-encoded message must decode");
        assert_eq!(again.msg, d.msg);
    }
});
