//! `rserpool decode` (placeholder until the codec lands).
#[derive(clap::Args, Debug)]
pub struct DecodeArgs {}
pub fn run(_a: DecodeArgs) -> i32 {
    eprintln!("rserpool decode: not built yet");
    2
}
