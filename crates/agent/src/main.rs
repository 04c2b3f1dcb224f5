//! The msb guest agent: PID 1 of a microVM. It mounts the kernel
//! filesystems, loads the virtio modules from the initramfs, talks to the
//! host over the `msb.control` virtio-serial port, applies the host's plan,
//! runs commands and powers the guest off.

mod exec;
mod launcher;
mod setup;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msb_agent_protocol::{
    CONTROL_PORT_NAME, FrameError, GuestMessage, GuestPlan, HostMessage, read_message,
};
use msb_security::Confinement;

use exec::{Agent, Defaults};
use launcher::Launcher;

/// Errors that end the agent (and with it the guest).
#[derive(Debug, thiserror::Error)]
enum AgentError {
    /// Bringing the guest up failed.
    #[error("guest setup failed")]
    Setup(#[from] setup::SetupError),
    /// The control port never appeared.
    #[error("the control port {0} did not appear")]
    NoPort(&'static str),
    /// Opening the control port failed.
    #[error("opening the control port {path} failed")]
    OpenPort { path: PathBuf, source: io::Error },
    /// The host never connected.
    #[error("the host did not connect to the control port")]
    NoHost(#[source] io::Error),
    /// The control channel broke.
    #[error("the control channel failed")]
    Channel(#[from] FrameError),
    /// The host closed the channel, so nobody is left to serve.
    #[error("the host went away")]
    HostGone,
    /// The plan's security profile could not be compiled.
    #[error("cannot prepare the security profile")]
    Profile(#[source] msb_security::seccomp::SeccompError),
    /// The process that starts confined commands could not be started.
    #[error("cannot start the command launcher")]
    Launcher(#[source] io::Error),
}

fn main() {
    launcher::main_if_launcher();
    if std::process::id() != 1 {
        eprintln!("msb-agent: runs only as the guest's init");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("msb-agent: {}", chain(&e));
    }
    power_off();
}

/// An error and its sources as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn run() -> Result<(), AgentError> {
    setup::kernel_filesystems()?;
    setup::load_modules()?;
    let port = open_port()?;
    let mut reader = port.try_clone().map_err(|source| AgentError::OpenPort {
        path: "port".into(),
        source,
    })?;
    let agent = Agent::new(port);
    {
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || agent.reap_forever());
    }
    send_ready(&agent)?;

    // Until the host's first message, a read of nothing means the host side
    // is not connected yet; after it, the host is gone.
    let mut heard = false;
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = match read_message::<_, HostMessage>(&mut reader) {
            Ok(Some(msg)) => msg,
            Ok(None) if !heard && Instant::now() < connect_deadline => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Ok(None) => return Err(AgentError::HostGone),
            Err(e) => return Err(e.into()),
        };
        heard = true;
        handle(&agent, msg);
    }
}

fn handle(agent: &Arc<Agent>, msg: HostMessage) {
    let reply = match msg {
        // Applying a plan again would remount under running commands.
        HostMessage::Configure(_) if !agent.start_configuring() => Some(GuestMessage::Error {
            id: None,
            message: "the guest is already configured".into(),
        }),
        HostMessage::Configure(plan) => Some(match configure(plan) {
            Ok(defaults) => {
                agent.set_defaults(defaults);
                GuestMessage::Configured
            }
            Err(e) => GuestMessage::Error {
                id: None,
                message: chain(&e),
            },
        }),
        HostMessage::Exec(req) => {
            agent.exec(req);
            None
        }
        HostMessage::Stdin { id, data } => {
            agent.stdin(id, data);
            None
        }
        HostMessage::StdinClose { id } => {
            agent.stdin_close(id);
            None
        }
        HostMessage::Signal { id, signo } => {
            agent
                .signal(id, signo)
                .err()
                .map(|message| GuestMessage::Error {
                    id: Some(id),
                    message,
                })
        }
        HostMessage::Resize { id, rows, cols } => {
            agent
                .resize(id, rows, cols)
                .err()
                .map(|message| GuestMessage::Error {
                    id: Some(id),
                    message,
                })
        }
        HostMessage::Ping { nonce } => Some(GuestMessage::Pong { nonce }),
        HostMessage::TimeSpawn { argv, iterations } => {
            let (mean, failures) = agent.time_spawn(&argv, iterations);
            Some(GuestMessage::SpawnTimed {
                mean_ns: mean.as_nanos() as u64,
                failures,
            })
        }
        HostMessage::Shutdown { grace_ms } => {
            agent.stop_everything(Duration::from_millis(grace_ms));
            // Let the last exit reports out before the machine stops.
            agent.wait_reported(Duration::from_secs(1));
            power_off();
        }
    };
    if let Some(reply) = reply {
        let _ = agent.send(&reply);
    }
}

/// Applies the plan and returns what every command gets from it; the
/// profile is compiled first, so that a plan whose profile cannot be had
/// runs nothing.
fn configure(plan: GuestPlan) -> Result<Defaults, AgentError> {
    // Compiled here once so that a profile that cannot be had fails the
    // plan; the launcher compiles its own copy and applies it to itself.
    if let Some(security) = plan.security {
        Confinement::new(security).map_err(AgentError::Profile)?;
    }
    setup::apply(&plan)?;
    // In the sandbox's root, as the commands it starts.
    let launcher = plan
        .security
        .map(Launcher::start)
        .transpose()
        .map_err(AgentError::Launcher)?
        .map(Arc::new);
    let workdir = if plan.workdir.is_empty() {
        "/".into()
    } else {
        plan.workdir
    };
    Ok(Defaults {
        env: plan.env,
        workdir,
        launcher,
    })
}

/// Finds the control port by name and opens it; devices appear as the
/// virtio drivers probe, so this waits a little.
fn open_port() -> Result<File, AgentError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let named = fs::read_to_string(entry.path().join("name"))
                    .is_ok_and(|n| n.trim_end() == CONTROL_PORT_NAME);
                let dev = PathBuf::from("/dev").join(entry.file_name());
                if named && dev.exists() {
                    return OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)
                        .map_err(|source| AgentError::OpenPort { path: dev, source });
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AgentError::NoPort(CONTROL_PORT_NAME));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Announces the agent; the port refuses writes until the host side is
/// connected, so this retries for a while.
fn send_ready(agent: &Agent) -> Result<(), AgentError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match agent.send(&GuestMessage::Ready) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(AgentError::NoHost(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reaps children until none is left or `limit` passed.
fn reap_all(limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // SAFETY: waitpid with a null status pointer.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        match r {
            0 => std::thread::sleep(Duration::from_millis(5)),
            r if r < 0 => return,
            _ => {}
        }
    }
}

/// Mount points of block devices, in mount order.
fn block_mounts() -> Vec<std::ffi::CString> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (ours, theirs) = line.split_once(" - ")?;
            let source = theirs.split(' ').nth(1)?;
            let point = ours.split(' ').nth(4)?;
            source.starts_with("/dev/vd").then(|| unescape(point))?
        })
        .collect()
}

/// A mountinfo field with its octal escapes (`\040`) undone.
fn unescape(field: &str) -> Option<std::ffi::CString> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(oct).ok()?, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::CString::new(out).ok()
}

/// Stops every process and powers the machine off; QEMU (run with
/// `-no-reboot`) exits.
fn power_off() -> ! {
    // SAFETY: kill(-1) signals every process but init; sync and reboot take
    // no pointers. Powering off is the purpose here.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
    reap_all(Duration::from_secs(2));
    // A disk's filesystem left mounted needs its journal replayed before it
    // can next be mounted read-only; read-only now, it is left clean.
    for point in block_mounts().iter().rev() {
        // SAFETY: a remount of a path we read from mountinfo; no data.
        unsafe {
            libc::mount(
                std::ptr::null(),
                point.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
    }
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; exiting init panics the kernel, which
    // with panic=-1 and -no-reboot also ends QEMU.
    std::process::exit(1)
}
