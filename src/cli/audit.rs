//! `ferry audit verify FILE…`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Audit commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the hash chain of audit files (oldest first); name the first broken line.
    Verify {
        /// Audit files, oldest first (e.g. audit.log.2 audit.log.1 audit.log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs an audit command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Verify { files } = command;
    match ferry::audit::verify_files(&files) {
        Ok(n) => {
            println!("ok: {n} line(s) in {} file(s), chain intact", files.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(brk) => {
            eprintln!("{brk}");
            Ok(ExitCode::FAILURE)
        }
    }
}
