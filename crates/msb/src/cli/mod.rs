//! Command-line parsing and dispatch. Each command group lives in its own
//! module; every module turns raw strings into typed config once, then calls
//! the library.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cp;
mod doctor;
mod fs;
mod mount;
mod run;
mod sandbox;
mod text;
mod untar;
mod volume;

/// Sandboxes with real storage.
#[derive(Debug, Parser)]
#[command(name = "msb", version, about)]
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
    /// (`HOSTPATH VOLUME:PATH` or `VOLUME:PATH HOSTPATH`) or a running
    /// sandbox (`HOSTPATH SANDBOX:PATH` or `SANDBOX:PATH HOSTPATH`).
    Cp(cp::CpArgs),
    /// Say which backends work on this host and why not (each is tried).
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script to stdout (e.g.
    /// `msb completion bash > /etc/bash_completion.d/msb`).
    Completion(CompletionArgs),
    /// Print the manual page msb(1) to stdout, or write a page for every
    /// command into a directory (--dir).
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
struct CompletionArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
struct ManArgs {
    /// Write msb.1, msb-volume.1, msb-volume-create.1, ... into this
    /// existing directory instead of printing msb.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
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
        Command::Doctor(args) => doctor::run(args),
        Command::Completion(args) => completion(args),
        Command::Man(args) => man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(e.as_ref());
            ExitCode::from(1)
        }
    }
}

/// Completions come from the same definitions that parse the command line,
/// so they cannot drift from it.
fn completion(args: CompletionArgs) -> CliResult {
    let mut text = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "msb", &mut text);
    print_text(&text)
}

fn man(args: ManArgs) -> CliResult {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|source| CliError::ManDir { dir, source })?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut text = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut text)?;
            print_text(&text)
        }
    }
}

/// Writes generated text to stdout; a reader that stopped early (`| head`)
/// is not a failure of ours.
fn print_text(text: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e).into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Failures of the commands defined in this module.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot write manual pages into {}", dir.display())]
    ManDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
}

/// A timestamp as RFC 3339 in UTC, to the second (`2026-11-29T05:17:13Z`).
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Prints `error: ...` with the chain of causes, then a `hint: ...` line
/// for each next step known for an error in that chain.
pub(crate) fn report(e: &(dyn std::error::Error + 'static)) {
    report_for(e, Purpose::Use);
}

/// What the failed command wanted of a volume someone else holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Write to it or read it (clone, import, a sandbox): a stopped
    /// sandbox no longer stands in the way.
    Use,
    /// Remove it: every sandbox that references it does, running or not.
    Removal,
}

/// [`report`] for a command with `purpose`.
pub(crate) fn report_for(e: &(dyn std::error::Error + 'static), purpose: Purpose) {
    eprintln!("error: {}", describe(e, purpose));
}

/// The chain of `e` and its hints, as [`report_for`] prints them after
/// `error: `.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static), purpose: Purpose) -> String {
    let mut text = chain(e);
    for hint in hints(e, purpose) {
        text.push_str("\nhint: ");
        text.push_str(&hint);
    }
    text
}

/// The next steps known for the errors in `e`'s chain.
fn hints(e: &(dyn std::error::Error + 'static), purpose: Purpose) -> Vec<String> {
    let mut found = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let users = match e.downcast_ref() {
            Some(msb_store::StoreError::InUse { users, .. }) => Some(users),
            _ => match e.downcast_ref() {
                Some(msb::Error::VolumeInUse { users, .. }) => Some(users),
                _ => None,
            },
        };
        if let Some(users) = users {
            found.extend(users.iter().map(|u| release_hint(u, purpose)));
        }
        if let Some(msb_fsserver::FsServerError::OpenFuse(io)) = e.downcast_ref() {
            found.push(fuse_hint(io));
        }
        next = e.source();
    }
    found
}

/// How to make `holder` (as the store names it) let go of a volume.
fn release_hint(holder: &str, purpose: Purpose) -> String {
    let pid_of = |rest: &str| rest.split('-').next().unwrap_or(rest).to_string();
    if let Some(dir) = holder.strip_prefix("mount:") {
        return format!(
            "it is mounted on the host at {}: `msb volume unmount {}` ends that mount",
            text::escape(dir),
            text::escape(dir)
        );
    }
    if let Some(rest) = holder.strip_prefix("host:volume-files:") {
        return format!(
            "another msb command (process {}) has its files open; wait for it to finish",
            text::escape(rest)
        );
    }
    if let Some(rest) = holder.strip_prefix("sandbox:run-")
        && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-')
    {
        return format!(
            "a one-shot `msb run` (process {}) uses it; wait for it to finish or stop it",
            pid_of(rest)
        );
    }
    if let Some(name) = holder.strip_prefix("sandbox:") {
        let name = text::escape(name);
        return match purpose {
            Purpose::Removal => format!(
                "sandbox {name} references it, running or not: `msb rm {name}` removes that sandbox and releases the volume"
            ),
            Purpose::Use => format!(
                "sandbox {name} is running with it: `msb stop {name}` releases it (`msb rm {name}` removes that sandbox)"
            ),
        };
    }
    format!("{} holds it", text::escape(holder))
}

/// Why `/dev/fuse` could not be opened, in terms of what to change.
fn fuse_hint(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "this host has no /dev/fuse: load the fuse kernel module (`modprobe fuse`), or in a container pass the device in (`--device /dev/fuse`)".into(),
        K::PermissionDenied => "this user may not open /dev/fuse: make it mode 0666 (as Debian ships it) or run msb as root; `msb doctor` shows what this host allows".into(),
        _ => "`msb doctor` shows whether this host can serve FUSE mounts".into(),
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
