//! `rserpool`: the command-line front end.

mod bench;
mod bench_enrp;
mod bench_registrar;
mod bench_session;
mod client;
mod decode;
mod demo;
mod hugealloc;
mod pe;
mod pu;
mod registrar;
mod services;

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
    /// Run a pool element (echo, discard, daytime, chargen, pingpong, files)
    /// until SIGINT/SIGTERM.
    Pe(Box<pe::PeArgs>),
    /// A pool user: lines from stdin to the pool, replies to stdout,
    /// fail-overs on stderr.
    Pu(Box<pu::PuArgs>),
    /// A registrar, three PEs and a pool user on this machine; a PE is
    /// killed and the session fails over. Narrated; a few seconds.
    Demo(demo::DemoArgs),
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
        Command::Pe(a) => pe::run(*a),
        Command::Pu(a) => pu::run(*a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(b) => bench::run(b),
    };
    std::process::exit(code);
}
