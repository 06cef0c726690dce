//! `rserpool bench` (placeholder until the handlespace lands).
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {}
pub fn run(c: BenchCommand) -> i32 {
    match c {}
}
