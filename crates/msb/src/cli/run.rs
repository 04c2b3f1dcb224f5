//! `msb run`. (Being written for the mounts issue.)

use std::process::ExitCode;

use super::CliResult;

/// Arguments of `msb run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(_args: RunArgs) -> CliResult {
    Err("msb run is not available yet".into()).map(|(): ()| ExitCode::SUCCESS)
}
