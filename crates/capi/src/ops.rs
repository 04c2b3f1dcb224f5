//! The operations behind `msb_call`: each takes its JSON input and returns
//! its JSON result, through the public msb API on the default home
//! (`$MSB_HOME`, else `~/.microsandbox`).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use msb::{
    DiskOptions, ExecSignaller, ExecStream, HostPerms, Mount, MountOptions, NamedMode,
    NamedVolumeOptions, Resources, Sandbox, SandboxState, StatVirt, TmpfsOptions, Volume,
    VolumeHandle, VolumeKind, VolumeName, VolumeStore,
};
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::runtime;

type Result<T> = std::result::Result<T, CallError>;

fn parse<'a, T: Deserialize<'a>>(input: &'a str) -> Result<T> {
    serde_json::from_str(input).map_err(|e| CallError::new("InvalidArgument", e.to_string()))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| CallError::new("Internal", e.to_string()))
}

/// Runs operation `op` on `input`; the result is the JSON of its value.
pub fn call(op: &str, input: &str) -> Result<String> {
    match op {
        "volume.create" => volume_create(parse(input)?),
        "volume.remove" => volume_remove(parse(input)?),
        "sandbox.create" => sandbox_create(parse(input)?),
        "sandbox.start" => sandbox_start(parse(input)?),
        "sandbox.get" => sandbox_get(parse(input)?),
        "sandbox.list" => sandbox_list(),
        "sandbox.stop" => sandbox_stop(parse(input)?),
        "sandbox.remove" => sandbox_remove(parse(input)?),
        "exec.start" => exec_start(parse(input)?),
        "exec.kill" => exec_kill(parse(input)?),
        other => Err(CallError::new(
            "InvalidArgument",
            format!("unknown operation {other:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

// ---- volumes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVolume {
    name: String,
    #[serde(default)]
    kind: String,
    /// Zero: not given.
    #[serde(default)]
    size_mib: u32,
    /// Zero: unlimited.
    #[serde(default)]
    quota_mib: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Appends `h` to `buf` in the record format of `msb_volumes` (see the
/// header): length-prefixed strings and little-endian numbers, which the Go
/// SDK decodes without a JSON parser (a listing of 1000 volumes would
/// otherwise cost more to decode than to make).
pub(crate) fn encode_volume(buf: &mut Vec<u8>, h: &VolumeHandle) {
    fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
        buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        buf.extend_from_slice(b);
    }
    put_bytes(buf, h.name().as_bytes());
    put_bytes(buf, h.path().as_os_str().as_bytes());
    buf.push(match h.kind() {
        VolumeKind::Dir => 0,
        VolumeKind::Disk => 1,
    });
    let created = h
        .created_at()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok());
    let flags = u8::from(h.quota_mib().is_some())
        | u8::from(h.capacity_bytes().is_some()) << 1
        | u8::from(created.is_some()) << 2;
    buf.push(flags);
    buf.extend_from_slice(&h.quota_mib().unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&h.used_bytes().to_le_bytes());
    buf.extend_from_slice(&h.capacity_bytes().unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&created.unwrap_or(0).to_le_bytes());
    put_bytes(buf, h.disk_format().unwrap_or("").as_bytes());
    put_bytes(buf, h.disk_fstype().unwrap_or("").as_bytes());
    let labels = h.labels();
    buf.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (k, v) in labels.iter() {
        put_bytes(buf, k.as_bytes());
        put_bytes(buf, v.as_bytes());
    }
}

/// `name`'s record, or every volume's (newest first) when `name` is `None`,
/// each after a count.
pub(crate) fn volumes(name: Option<&str>) -> Result<Vec<u8>> {
    let list = match name {
        Some(n) => vec![runtime().block_on(Volume::get(n))?],
        None => runtime().block_on(Volume::list())?,
    };
    let mut buf = Vec::with_capacity(16 + list.len() * 192);
    buf.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for h in &list {
        encode_volume(&mut buf, h);
    }
    Ok(buf)
}

fn volume_create(req: CreateVolume) -> Result<String> {
    let kind = match req.kind.as_str() {
        "" | "dir" => VolumeKind::Dir,
        "disk" => VolumeKind::Disk,
        other => {
            return Err(CallError::new(
                "InvalidConfig",
                format!("unknown volume kind {other:?}; expected \"dir\" or \"disk\""),
            ));
        }
    };
    let mut b = Volume::builder(req.name).kind(kind);
    if req.size_mib != 0 {
        b = b.size_mib(req.size_mib);
    }
    if req.quota_mib != 0 {
        b = b.quota_mib(req.quota_mib);
    }
    for (k, v) in req.labels {
        b = b.label(k, v);
    }
    let v = runtime().block_on(b.create())?;
    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        path: &'a str,
        kind: &'static str,
    }
    to_json(&Out {
        name: v.name(),
        path: v.path().to_str().unwrap_or_default(),
        kind: v.kind().as_str(),
    })
}

fn volume_remove(req: Named) -> Result<String> {
    runtime().block_on(Volume::remove(&req.name))?;
    Ok("null".into())
}

/// The volume files of `name` in the default home, opened for writing or
/// reading.
pub(crate) fn files(name: &str, write: bool) -> Result<msb::VolumeFiles> {
    let store = VolumeStore::default_home()?;
    Ok(runtime().block_on(store.files(name, write))?)
}

// ---- mounts ----

/// The Go SDK's `MountConfig`, field for field (zero values: not given).
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct GoMount {
    kind: String,
    bind: String,
    named: String,
    named_mode: String,
    named_kind: String,
    quota_mib: u32,
    tmpfs: bool,
    disk: String,
    format: String,
    fstype: String,
    readonly: bool,
    noexec: bool,
    nosuid: bool,
    nodev: bool,
    size_mib: u32,
    stat_virtualization: String,
    host_permissions: String,
}

fn invalid_mount(message: impl Into<String>) -> CallError {
    CallError::new("InvalidMount", message)
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

impl GoMount {
    /// The flavour: the factory's discriminator, which must agree with the
    /// one source field set (a hand-made config has only the latter).
    fn flavour(&self) -> Result<&'static str> {
        let set: Vec<&'static str> = [
            (!self.bind.is_empty(), "bind"),
            (!self.named.is_empty(), "named"),
            (self.tmpfs, "tmpfs"),
            (!self.disk.is_empty(), "disk"),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        let kind = self.kind.as_str();
        if !matches!(kind, "" | "bind" | "named" | "tmpfs" | "disk") {
            return Err(invalid_mount(format!("unknown mount kind {kind:?}")));
        }
        match set.as_slice() {
            [one] if kind.is_empty() || kind == *one => Ok(one),
            [one] => Err(invalid_mount(format!(
                "the {kind} mount sets the source of a {one} mount instead"
            ))),
            [] => Err(invalid_mount(
                "the mount names no source; build it with the Mount factory",
            )),
            _ => Err(invalid_mount(format!(
                "the mount sets more than one of Bind, Named, Tmpfs and Disk ({})",
                set.join(", ")
            ))),
        }
    }

    fn options(&self) -> Result<MountOptions> {
        let stat_virt = match self.stat_virtualization.as_str() {
            "" => None,
            s => Some(
                s.parse::<StatVirt>()
                    .map_err(|e| invalid_mount(e.to_string()))?,
            ),
        };
        let host_perms = match self.host_permissions.as_str() {
            "" => None,
            s => Some(
                s.parse::<HostPerms>()
                    .map_err(|e| invalid_mount(e.to_string()))?,
            ),
        };
        Ok(MountOptions {
            readonly: self.readonly,
            noexec: self.noexec,
            nosuid: self.nosuid,
            nodev: self.nodev,
            stat_virt,
            host_perms,
        })
    }

    fn has_policy(&self) -> bool {
        !self.stat_virtualization.is_empty() || !self.host_permissions.is_empty()
    }

    /// Refuses fields that belong to named mounts on another flavour.
    fn no_named_fields(&self, flavour: &str) -> Result<()> {
        if !self.named_mode.is_empty() || !self.named_kind.is_empty() || self.quota_mib != 0 {
            return Err(invalid_mount(format!(
                "{flavour} mounts take no NamedMode, NamedKind or QuotaMiB"
            )));
        }
        Ok(())
    }

    fn into_mount(self) -> Result<Mount> {
        let flavour = self.flavour()?;
        if matches!(flavour, "tmpfs" | "disk") && self.has_policy() {
            let what = if flavour == "tmpfs" {
                "tmpfs"
            } else {
                "disk image"
            };
            return Err(msb::MountError::PolicyNotAllowed(what).into());
        }
        if flavour != "named" {
            self.no_named_fields(flavour)?;
        }
        if flavour != "disk" && (!self.format.is_empty() || !self.fstype.is_empty()) {
            return Err(invalid_mount(format!(
                "{flavour} mounts take no Format or Fstype"
            )));
        }
        match flavour {
            "bind" => {
                if self.size_mib != 0 {
                    return Err(invalid_mount("bind mounts take no SizeMiB"));
                }
                Ok(Mount::bind(&self.bind, self.options()?))
            }
            "named" => {
                let name = VolumeName::new(self.named.as_str()).map_err(|e| {
                    CallError::new(
                        "InvalidName",
                        format!("invalid volume name {:?}: {e}", self.named),
                    )
                })?;
                let mode = match self.named_mode.as_str() {
                    "" => NamedMode::Existing,
                    m => m.parse::<NamedMode>()?,
                };
                let kind = match self.named_kind.as_str() {
                    "" => None,
                    "dir" => Some(VolumeKind::Dir),
                    "disk" => Some(VolumeKind::Disk),
                    k => {
                        return Err(invalid_mount(format!(
                            "unknown volume kind {k:?}; expected \"dir\" or \"disk\""
                        )));
                    }
                };
                let volume = NamedVolumeOptions {
                    mode,
                    kind,
                    size_mib: nonzero(self.size_mib),
                    quota_mib: nonzero(self.quota_mib),
                    ..Default::default()
                };
                Ok(Mount::named_with(name, self.options()?, volume))
            }
            "tmpfs" => Ok(Mount::tmpfs(TmpfsOptions {
                size_mib: nonzero(self.size_mib),
                readonly: self.readonly,
                noexec: self.noexec,
                nosuid: self.nosuid,
                nodev: self.nodev,
            })),
            _ => {
                if self.size_mib != 0 {
                    return Err(invalid_mount("disk image mounts take no SizeMiB"));
                }
                let format = match self.format.as_str() {
                    "" => None,
                    f => Some(f.parse()?),
                };
                Ok(Mount::disk(
                    &self.disk,
                    DiskOptions {
                        format,
                        fstype: (!self.fstype.is_empty()).then_some(self.fstype),
                        readonly: self.readonly,
                        noexec: self.noexec,
                        nosuid: self.nosuid,
                        nodev: self.nodev,
                    },
                ))
            }
        }
    }
}

// ---- sandboxes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSandbox {
    name: String,
    #[serde(default)]
    mounts: BTreeMap<String, GoMount>,
    #[serde(default)]
    rootfs: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    /// Zero: the default.
    #[serde(default)]
    memory_mib: u32,
    /// Zero: no limit.
    #[serde(default)]
    cpus: u32,
    /// `namespace` (the default), `vm` or `auto`.
    #[serde(default)]
    backend: Option<String>,
}

#[derive(Serialize)]
struct SandboxJson<'a> {
    name: &'a str,
    state: &'static str,
}

fn sandbox_json(sb: &Sandbox) -> SandboxJson<'_> {
    SandboxJson {
        name: sb.name(),
        state: match sb.state() {
            SandboxState::Running => "running",
            SandboxState::Stopped => "stopped",
        },
    }
}

fn sandbox_create(req: CreateSandbox) -> Result<String> {
    let mut b = Sandbox::builder(req.name);
    for (guest, m) in req.mounts {
        b = b.volume(guest, m.into_mount()?);
    }
    if let Some(r) = req.rootfs {
        b = b.rootfs(r);
    }
    for (k, v) in req.env {
        b = b.env(k, v);
    }
    if let Some(w) = req.workdir {
        b = b.workdir(w);
    }
    let mut resources = Resources::default();
    if req.memory_mib != 0 {
        resources.memory_mib = req.memory_mib;
    }
    if req.cpus != 0 {
        resources.cpus_milli = Some(req.cpus.saturating_mul(1000));
    }
    if let Some(backend) = req.backend {
        let kind: msb::BackendKind = backend
            .parse()
            .map_err(|e: String| CallError::new("InvalidArgument", e))?;
        b = b.backend(kind);
    }
    let sb = runtime().block_on(b.resources(resources).create())?;
    to_json(&sandbox_json(&sb))
}

fn sandbox_start(req: Named) -> Result<String> {
    let sb = runtime().block_on(Sandbox::start(&req.name))?;
    to_json(&sandbox_json(&sb))
}

fn sandbox_get(req: Named) -> Result<String> {
    let sb = runtime().block_on(Sandbox::get(&req.name))?;
    to_json(&sandbox_json(&sb))
}

fn sandbox_list() -> Result<String> {
    let list = runtime().block_on(Sandbox::list())?;
    to_json(&list.iter().map(sandbox_json).collect::<Vec<_>>())
}

fn sandbox_stop(req: Named) -> Result<String> {
    let sb = runtime().block_on(Sandbox::get(&req.name))?;
    runtime().block_on(sb.stop())?;
    Ok("null".into())
}

fn sandbox_remove(req: Named) -> Result<String> {
    runtime().block_on(Sandbox::remove(&req.name))?;
    Ok("null".into())
}

// ---- commands ----

/// A started command: its stream until someone waits for it, and the
/// signaller that cancellation uses meanwhile.
struct Exec {
    stream: Option<ExecStream>,
    signaller: Arc<ExecSignaller>,
}

fn execs() -> &'static Mutex<HashMap<u64, Exec>> {
    static EXECS: OnceLock<Mutex<HashMap<u64, Exec>>> = OnceLock::new();
    EXECS.get_or_init(Default::default)
}

fn lock_execs() -> std::sync::MutexGuard<'static, HashMap<u64, Exec>> {
    execs().lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecStart {
    sandbox: String,
    cmd: String,
    /// Null or absent: none.
    #[serde(default)]
    args: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecId {
    id: u64,
}

fn exec_start(req: ExecStart) -> Result<String> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let stream = runtime().block_on(async {
        let sb = Sandbox::get(&req.sandbox).await?;
        let mut stream = sb
            .exec_stream(req.cmd, req.args.unwrap_or_default())
            .await?;
        // Like `Sandbox::exec`: the command gets no input.
        stream.close_stdin();
        Ok::<_, CallError>(stream)
    })?;
    let signaller = Arc::new(stream.signaller()?);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock_execs().insert(
        id,
        Exec {
            stream: Some(stream),
            signaller,
        },
    );
    to_json(&serde_json::json!({ "id": id }))
}

fn exec_kill(req: ExecId) -> Result<String> {
    let signaller = lock_execs().get(&req.id).map(|e| e.signaller.clone());
    if let Some(s) = signaller {
        s.signal(libc::SIGKILL)?;
    }
    Ok("null".into())
}

/// Waits for command `id` and forgets it: exit status, stdout, stderr.
pub(crate) fn exec_wait(id: u64) -> Result<msb::ExecOutput> {
    let stream = lock_execs().get_mut(&id).and_then(|e| e.stream.take());
    let stream = stream.ok_or_else(|| {
        CallError::new(
            "InvalidArgument",
            format!("no command {id} is waiting to be collected"),
        )
    })?;
    let out = runtime().block_on(stream.output());
    lock_execs().remove(&id);
    Ok(out?)
}
