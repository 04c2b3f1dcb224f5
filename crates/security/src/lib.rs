//! The workload's security profiles: what a sandboxed command may do once
//! it runs, the same on every backend. A profile ([`Security`]) is a
//! system call filter ([`seccomp`]) and a capability set ([`caps`]); the
//! namespace backend's init and the microVM guest agent both apply it
//! between fork and exec through [`Confinement`]. [`child`] holds the steps
//! by which helper processes of the host side leave msb's privileges.

pub mod caps;
pub mod child;
pub mod seccomp;

use serde::{Deserialize, Serialize};

/// Privileges of the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Root of the sandbox's user namespace with a container-like
    /// capability set (no `CAP_SYS_ADMIN`, so no mount or remount; no
    /// `CAP_MKNOD`) and the default system call filter.
    #[default]
    Default,
    /// Every capability dropped, `no_new_privs`, and a stricter system call
    /// filter.
    Restricted,
    /// No filter and every capability: for a microVM sandbox only, whose
    /// own kernel is then the whole boundary (for work that mounts,
    /// loads modules or nests containers). The namespace backend refuses
    /// it: there the host's kernel would be exposed.
    Privileged,
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Security::Default),
            "restricted" => Ok(Security::Restricted),
            "privileged" => Ok(Security::Privileged),
            other => Err(format!(
                "unknown security profile {other:?}; expected default, restricted or privileged"
            )),
        }
    }
}

/// A profile made ready before fork, to be applied between fork and exec
/// without allocating.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// None for [`Security::Privileged`].
    filter: Option<seccomp::Filter>,
    keep: u64,
    last_cap: u32,
    no_new_privs: bool,
}

impl Confinement {
    /// Compiles the filter of `security` and reads this kernel's last
    /// capability. Call it before fork: it allocates.
    pub fn new(security: Security) -> Result<Confinement, seccomp::SeccompError> {
        Ok(Confinement {
            filter: match security {
                Security::Privileged => None,
                confined => Some(seccomp::filter(confined)?),
            },
            keep: caps::keep_set(security),
            last_cap: caps::last_cap(),
            no_new_privs: security == Security::Restricted,
        })
    }

    /// Installs the filter, then drops the capabilities (and, restricted,
    /// sets `no_new_privs`). Async-signal-safe; the caller needs
    /// `CAP_SYS_ADMIN`, which installing a filter without `no_new_privs`
    /// requires.
    pub fn apply(&self) -> std::io::Result<()> {
        // While the capabilities to install it without no_new_privs last.
        if let Some(filter) = &self.filter {
            filter.apply()?;
        }
        caps::apply(self.keep, self.last_cap, self.no_new_privs)
    }
}
