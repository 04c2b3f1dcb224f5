//! `msb volume ...`. (Being written for the volume store issue.)

use std::process::ExitCode;

use clap::Subcommand;

use super::CliResult;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume.
    Create {
        /// Volume name.
        name: String,
    },
}

pub fn run(cmd: VolumeCommand) -> CliResult {
    match cmd {
        VolumeCommand::Create { name } => Err(format!("not available yet: {name}").into()).map(|(): ()| ExitCode::SUCCESS),
    }
}
