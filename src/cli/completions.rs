//! `bgmigrate completions SHELL`: a completion script for the shell, printed to stdout.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Prints the completion script of every command and flag for `shell`. Written whole from memory, so a reader that
/// stops early (`| head`) ends the output instead of a panic.
pub fn run(shell: Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bgmigrate", &mut script);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot write the completion script: {err}");
            ExitCode::from(1)
        }
    }
}
