//! The control channel between the host (`msb-vm`) and the guest agent
//! (`msb-agent`, PID 1 of the microVM).
//!
//! The channel is a byte stream (a virtio-serial port on the guest side, a
//! unix socket on the host side) carrying length-prefixed frames:
//!
//! ```text
//! u32 little-endian payload length | payload
//! ```
//!
//! A payload starts with a kind byte. `J` is followed by one message encoded
//! as JSON (control messages are rare and small, so a readable encoding is
//! worth it). `D` carries stream data without any encoding, because command
//! output is the bulk of the traffic: `D | stream u8 | exec id u32 LE | bytes`
//! where stream 0 is stdin, 1 stdout and 2 stderr.
//!
//! Every exec carries an id chosen by the host; all messages about it carry
//! that id, so any number of commands run and stream at once.

use std::io::{self, Read, Write};

pub use msb_security::Security;
use serde::{Deserialize, Serialize};

/// Identifies one command started with [`HostMessage::Exec`]; chosen by the
/// host, unique among the commands of one guest.
pub type ExecId = u32;

/// The largest payload accepted; a longer length prefix means the stream is
/// corrupt (or hostile) rather than a message worth buffering.
pub const MAX_FRAME: usize = 16 << 20;

/// The largest data chunk a sender should put in one frame.
pub const MAX_DATA_CHUNK: usize = 64 << 10;

/// The name of the virtio-serial port the agent talks on.
pub const CONTROL_PORT_NAME: &str = "msb.control";

/// The one entry of a single-file share ([`MountSource::VirtioFsFile`]).
pub const FILE_SHARE_ENTRY: &str = "file";

/// What the guest mounts and how it sets itself up. Plain data: the host
/// decides everything, the agent only applies it in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GuestPlan {
    /// The guest's hostname.
    pub hostname: String,
    /// The root filesystem; `None` keeps the initramfs as root (used by
    /// tests and tools that put everything they need into it).
    pub root: Option<RootPlan>,
    /// Mounts in the order they are made, each on a path of the final root.
    pub mounts: Vec<GuestMount>,
    /// The working directory commands start in unless their exec says
    /// otherwise.
    pub workdir: String,
    /// Environment every command gets (`KEY=VALUE`), before its own.
    pub env: Vec<String>,
    /// The profile every command (the sandbox's and each exec) runs
    /// under, as on the namespace backend; `None` leaves commands the
    /// guest's unconfined root (tools and tests booting a bare initramfs).
    #[serde(default)]
    pub security: Option<Security>,
}

/// The guest's root: a read-only virtio-fs share under a writable tmpfs
/// overlay, plus files the host generated (such as `/etc/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPlan {
    /// The virtio-fs tag of the read-only lower layer.
    pub tag: String,
    /// Size of the writable upper layer in MiB; 0 lets the kernel choose
    /// (half of the guest's memory).
    pub upper_size_mib: u64,
    /// Where the share appears: empty or `/` makes it the lower layer of
    /// the whole root; another path (a fresh root's `/usr`) makes the root
    /// a tmpfs with the share mounted read-only there.
    #[serde(default)]
    pub lower_at: String,
    /// Directories (path, mode) made before the files, parents first.
    #[serde(default)]
    pub dirs: Vec<(String, u32)>,
    /// Symbolic links (path, target) made before the files.
    #[serde(default)]
    pub symlinks: Vec<(String, String)>,
    /// Files written into the upper layer before anything runs.
    pub files: Vec<GuestFile>,
}

/// A file the host generated for the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Absolute path in the guest's root.
    pub path: String,
    /// The file's contents.
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// One mount of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    /// Absolute path in the guest's root; created (with parents) if missing.
    pub guest_path: String,
    /// What is mounted.
    pub source: MountSource,
    /// Read-only.
    pub ro: bool,
    /// No execution of files from this mount.
    pub noexec: bool,
    /// Set-user-ID and file capabilities ignored.
    pub nosuid: bool,
    /// Device nodes not usable.
    pub nodev: bool,
}

/// Where a mount's contents come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A virtio-fs share, named by its tag.
    VirtioFs {
        /// The share's tag.
        tag: String,
    },
    /// A virtio-blk disk, named by the serial the host gave it.
    Block {
        /// The disk's serial (at most 20 bytes, as virtio-blk keeps).
        serial: String,
        /// The filesystem type on the disk, such as `ext4`; empty tries the
        /// common ones (ext4, xfs, btrfs, vfat).
        fstype: String,
    },
    /// One file of a virtio-fs share, which serves that file alone under
    /// the name [`FILE_SHARE_ENTRY`]; bind-mounted onto the mount's path,
    /// which must be (or is created as) a file.
    VirtioFsFile {
        /// The share's tag.
        tag: String,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in MiB; 0 lets the kernel choose.
        size_mib: u64,
    },
}

/// A request to start a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The id every later message about this command carries.
    pub id: ExecId,
    /// Program and arguments; the program is looked up in `PATH` when it
    /// has no slash.
    pub argv: Vec<String>,
    /// Environment (`KEY=VALUE`) added after the plan's.
    pub env: Vec<String>,
    /// Working directory; `None` uses the plan's.
    pub workdir: Option<String>,
    /// Run on a new pseudo-terminal of this size (rows, columns) instead of
    /// pipes; stderr then arrives merged into stdout.
    pub tty: Option<(u16, u16)>,
    /// Whether the host sends stdin; without it the command's stdin is
    /// `/dev/null` (pipes) or the terminal with nothing typed (tty).
    pub stdin: bool,
}

/// Messages from host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Apply the plan; answered by [`GuestMessage::Configured`] or
    /// [`GuestMessage::Error`]. Sent once, before any exec.
    Configure(GuestPlan),
    /// Start a command; answered by `Started` or `StartFailed`.
    Exec(ExecRequest),
    /// Bytes for a command's stdin.
    Stdin {
        /// The command.
        id: ExecId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// End of a command's stdin.
    StdinClose {
        /// The command.
        id: ExecId,
    },
    /// Send a signal to a command.
    Signal {
        /// The command.
        id: ExecId,
        /// The signal number.
        signo: i32,
    },
    /// Change a tty command's window size.
    Resize {
        /// The command.
        id: ExecId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Answered by `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Run `argv` `iterations` times in the guest (fork, exec, wait, no
    /// streams) and report the mean time; a measurement for benchmarks.
    TimeSpawn {
        /// Program and arguments (looked up in `PATH`).
        argv: Vec<String>,
        /// How many runs.
        iterations: u32,
    },
    /// Stop everything: SIGTERM to all processes, SIGKILL to those left
    /// after `grace_ms`, sync, power off.
    Shutdown {
        /// Milliseconds between SIGTERM and SIGKILL.
        grace_ms: u64,
    },
}

/// Messages from guest to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// The agent runs and waits for `Configure`.
    Ready,
    /// The plan is applied.
    Configured,
    /// A command started.
    Started {
        /// The command.
        id: ExecId,
        /// Its process id in the guest.
        pid: i32,
    },
    /// A command could not start.
    StartFailed {
        /// The command.
        id: ExecId,
        /// The exit status a shell would give: 127 not found, 126 not
        /// executable or no such working directory.
        code: i32,
        /// Why.
        message: String,
    },
    /// Output on stdout (or the terminal).
    Stdout {
        /// The command.
        id: ExecId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Output on stderr.
    Stderr {
        /// The command.
        id: ExecId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The command ended; all its output was sent before this.
    Exited {
        /// The command.
        id: ExecId,
        /// Exit code, or 128+N when killed by signal N.
        status: i32,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Answer to `TimeSpawn`.
    SpawnTimed {
        /// Mean nanoseconds per fork+exec+wait.
        mean_ns: u64,
        /// Runs whose exit status was not 0.
        failures: u32,
    },
    /// A request failed (`id` names the command if it concerned one).
    Error {
        /// The command concerned, if any.
        id: Option<ExecId>,
        /// What went wrong.
        message: String,
    },
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("control channel i/o failed")]
    Io(#[from] io::Error),
    /// A length prefix beyond [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A payload that is not a message.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A JSON payload that is not a message.
    #[error("malformed message")]
    Json(#[from] serde_json::Error),
}

const KIND_JSON: u8 = b'J';
const KIND_DATA: u8 = b'D';
const STREAM_STDIN: u8 = 0;
const STREAM_STDOUT: u8 = 1;
const STREAM_STDERR: u8 = 2;

/// A message that travels as one frame.
pub trait Frame: Sized {
    /// Appends this message's payload (without the length prefix) to `out`.
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), FrameError>;
    /// Parses a payload.
    fn decode_payload(payload: &[u8]) -> Result<Self, FrameError>;

    /// The whole frame, length prefix included.
    fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![0u8; 4];
        self.encode_payload(&mut out)?;
        let len = out.len() - 4;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        out[..4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(out)
    }
}

fn encode_data(out: &mut Vec<u8>, stream: u8, id: ExecId, data: &[u8]) {
    out.push(KIND_DATA);
    out.push(stream);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(data);
}

fn encode_json<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<(), FrameError> {
    out.push(KIND_JSON);
    serde_json::to_writer(out, msg)?;
    Ok(())
}

/// Splits a data payload into (stream, id, bytes).
fn decode_data(payload: &[u8]) -> Result<(u8, ExecId, Vec<u8>), FrameError> {
    if payload.len() < 6 {
        return Err(FrameError::Malformed("short data frame"));
    }
    let id = u32::from_le_bytes([payload[2], payload[3], payload[4], payload[5]]);
    Ok((payload[1], id, payload[6..].to_vec()))
}

impl Frame for HostMessage {
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            HostMessage::Stdin { id, data } => {
                encode_data(out, STREAM_STDIN, *id, data);
                Ok(())
            }
            other => encode_json(out, other),
        }
    }

    fn decode_payload(payload: &[u8]) -> Result<Self, FrameError> {
        match payload.first() {
            Some(&KIND_JSON) => {
                let msg: HostMessage = serde_json::from_slice(&payload[1..])?;
                if matches!(msg, HostMessage::Stdin { .. }) {
                    return Err(FrameError::Malformed("stdin data sent as json"));
                }
                Ok(msg)
            }
            Some(&KIND_DATA) => match decode_data(payload)? {
                (STREAM_STDIN, id, data) => Ok(HostMessage::Stdin { id, data }),
                _ => Err(FrameError::Malformed("host data on an output stream")),
            },
            _ => Err(FrameError::Malformed("unknown frame kind")),
        }
    }
}

impl Frame for GuestMessage {
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            GuestMessage::Stdout { id, data } => {
                encode_data(out, STREAM_STDOUT, *id, data);
                Ok(())
            }
            GuestMessage::Stderr { id, data } => {
                encode_data(out, STREAM_STDERR, *id, data);
                Ok(())
            }
            other => encode_json(out, other),
        }
    }

    fn decode_payload(payload: &[u8]) -> Result<Self, FrameError> {
        match payload.first() {
            Some(&KIND_JSON) => {
                let msg: GuestMessage = serde_json::from_slice(&payload[1..])?;
                if matches!(
                    msg,
                    GuestMessage::Stdout { .. } | GuestMessage::Stderr { .. }
                ) {
                    return Err(FrameError::Malformed("output data sent as json"));
                }
                Ok(msg)
            }
            Some(&KIND_DATA) => match decode_data(payload)? {
                (STREAM_STDOUT, id, data) => Ok(GuestMessage::Stdout { id, data }),
                (STREAM_STDERR, id, data) => Ok(GuestMessage::Stderr { id, data }),
                _ => Err(FrameError::Malformed("guest data on the stdin stream")),
            },
            _ => Err(FrameError::Malformed("unknown frame kind")),
        }
    }
}

/// Writes one message as a frame, in a single `write_all` so that writers
/// sharing a stream under a lock never interleave partial frames.
pub fn write_message<W: Write, M: Frame>(w: &mut W, msg: &M) -> Result<(), FrameError> {
    let frame = msg.to_frame()?;
    w.write_all(&frame)?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read_message<R: Read, M: Frame>(r: &mut R) -> Result<Option<M>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    M::decode_payload(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<M: Frame + PartialEq + std::fmt::Debug>(msg: M) {
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).unwrap();
        let mut r = &buf[..];
        let back: M = read_message(&mut r).unwrap().unwrap();
        assert_eq!(back, msg);
        assert!(read_message::<_, M>(&mut r).unwrap().is_none());
    }

    #[test]
    fn messages_survive_a_round_trip() {
        round_trip(HostMessage::Stdin {
            id: 7,
            data: vec![0, 255, b'J', b'D'],
        });
        round_trip(HostMessage::Exec(ExecRequest {
            id: 3,
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            env: vec!["A=b".into()],
            workdir: Some("/tmp".into()),
            tty: Some((24, 80)),
            stdin: true,
        }));
        round_trip(HostMessage::Configure(GuestPlan {
            hostname: "h".into(),
            root: Some(RootPlan {
                tag: "root".into(),
                upper_size_mib: 64,
                lower_at: "/usr".into(),
                dirs: vec![("/var/tmp".into(), 0o1777)],
                symlinks: vec![("/bin".into(), "usr/bin".into())],
                files: vec![GuestFile {
                    path: "/etc/hosts".into(),
                    contents: b"x\n".to_vec(),
                    mode: 0o644,
                }],
            }),
            mounts: vec![GuestMount {
                guest_path: "/data".into(),
                source: MountSource::Block {
                    serial: "d0".into(),
                    fstype: "ext4".into(),
                },
                ro: true,
                noexec: false,
                nosuid: true,
                nodev: true,
            }],
            workdir: "/".into(),
            env: vec![],
            security: Some(Security::Restricted),
        }));
        round_trip(GuestMessage::Stdout {
            id: 1,
            data: b"hello".to_vec(),
        });
        round_trip(GuestMessage::Stderr {
            id: u32::MAX,
            data: vec![],
        });
        round_trip(GuestMessage::Exited { id: 1, status: 137 });
    }

    #[test]
    fn corrupt_frames_are_refused() {
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_message::<_, GuestMessage>(&mut &huge[..]),
            Err(FrameError::TooLarge(_))
        ));
        let mut truncated = Vec::new();
        write_message(&mut truncated, &GuestMessage::Ready).unwrap();
        truncated.pop();
        assert!(read_message::<_, GuestMessage>(&mut &truncated[..]).is_err());
        // Stdin data may only come from the host.
        let mut wrong = Vec::new();
        write_message(
            &mut wrong,
            &HostMessage::Stdin {
                id: 1,
                data: vec![1],
            },
        )
        .unwrap();
        assert!(matches!(
            read_message::<_, GuestMessage>(&mut &wrong[..]),
            Err(FrameError::Malformed(_))
        ));
    }
}
