//! Command-line parsing and dispatch. Each command group lives in its own
//! module; every module turns raw strings into typed config once, then calls
//! the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cp;
mod fs;
mod mount;
mod run;
mod sandbox;
mod text;
mod volume;

/// Sandboxes with real storage.
#[derive(Debug, Parser)]
#[command(name = "msb", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage named volumes.
    #[command(subcommand, visible_alias = "vol")]
    Volume(volume::VolumeCommand),
    /// Run a command in a new sandbox with mounts applied.
    Run(run::RunArgs),
    /// Create a named sandbox (recorded, with its volumes provisioned) and
    /// start it in the background (--no-start only records it).
    Create(sandbox::CreateArgs),
    /// List named sandboxes.
    #[command(visible_alias = "list")]
    Ls(sandbox::LsArgs),
    /// Show a named sandbox's state, config and mounts.
    Inspect(sandbox::InspectArgs),
    /// Remove named sandboxes, releasing their volumes.
    #[command(visible_alias = "remove")]
    Rm(sandbox::RmArgs),
    /// Start a named sandbox under a detached supervisor (one already
    /// running is left as it is).
    Start(sandbox::StartArgs),
    /// Stop running named sandboxes (their commands get SIGTERM, then SIGKILL after --time seconds).
    Stop(sandbox::StopArgs),
    /// Run a command in a running named sandbox.
    Exec(sandbox::ExecArgs),
    /// Copy files or directories between the host and a volume
    /// (`HOSTPATH VOLUME:PATH` or `VOLUME:PATH HOSTPATH`), or into a
    /// running sandbox (`HOSTPATH SANDBOX:PATH`).
    Cp(cp::CpArgs),
}

/// A command's failure, already reported or to be printed as `error: ...`.
pub(crate) type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Volume(cmd) => volume::run(cmd),
        Command::Run(args) => run::run(args),
        Command::Create(args) => sandbox::create(args),
        Command::Ls(args) => sandbox::ls(args),
        Command::Inspect(args) => sandbox::inspect(args),
        Command::Rm(args) => sandbox::rm(args),
        Command::Start(args) => sandbox::start(args),
        Command::Stop(args) => sandbox::stop(args),
        Command::Exec(args) => sandbox::exec(args),
        Command::Cp(args) => cp::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(e.as_ref());
            ExitCode::from(1)
        }
    }
}

/// A timestamp as RFC 3339 in UTC, to the second (`2026-11-29T05:17:13Z`).
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Prints `error: ...` with the chain of causes.
pub(crate) fn report(e: &dyn std::error::Error) {
    let mut msg = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{msg}");
}
