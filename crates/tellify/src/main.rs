//! The `tellify` command. Parsing and exit codes only: the work is in `tellify::cli`.

use std::process::ExitCode;

use clap::Parser;

/// See Cargo.toml: mimalloc returns freed memory to the system where glibc's allocator keeps it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = tellify::cli::Cli::parse();
    match tellify::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
