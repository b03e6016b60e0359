//! The `strom` binary: the broker (`strom serve`, arriving with the wire protocol) and the
//! command-line tools.

use clap::Parser;

/// strom: a partitioned, append-only event log broker.
#[derive(Debug, Parser)]
#[command(name = "strom", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "strom {}: the broker and tools arrive with the wire protocol; see README.md",
        env!("CARGO_PKG_VERSION")
    );
}
