//! `rserpool`: the command-line front end.

mod bench;
mod bench_enrp;
mod bench_registrar;
mod client;
mod decode;
mod hugealloc;
mod registrar;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[global_allocator]
static ALLOC: hugealloc::HugePageAlloc = hugealloc::HugePageAlloc;

#[derive(Parser, Debug)]
#[command(
    name = "rserpool",
    version,
    about = "Reliable Server Pooling (RSerPool) tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode one ASAP or ENRP message given as hex and print it as JSON.
    Decode(decode::DecodeArgs),
    /// Run a registrar (ENRP server, ASAP side) until SIGINT/SIGTERM.
    Registrar(Box<registrar::RegistrarArgs>),
    /// Resolve a pool handle at a registrar (ASAP over the TCP mapping).
    Resolve(client::ResolveArgs),
    /// Print a registrar's whole handlespace (ENRP_HANDLE_TABLE_REQUEST).
    Dump(client::DumpArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    // The registrar's flags show their defaults, computed from its config.
    let matches = registrar::annotate(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let code = match cli.command {
        Command::Decode(a) => decode::run(a),
        Command::Registrar(a) => registrar::run(*a),
        Command::Resolve(a) => client::resolve(a),
        Command::Dump(a) => client::dump(a),
        Command::Bench(b) => bench::run(b),
    };
    std::process::exit(code);
}
