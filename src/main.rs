//! `ferry`: parse the command line and dispatch to `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// jemalloc rather than the C library's malloc: ≈ 10 % less CPU per exchange in
/// `ferry-bench` (most requests allocate and free many small buffers across two worker
/// threads), and size-classed arenas that keep a long-running server's heap from
/// fragmenting. Measured figures, including its memory cost, in BENCHMARKS.md.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    ferry::install_crypto_provider();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
