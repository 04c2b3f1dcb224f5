package microsandbox

// StatVirtualization is the per-mount policy for how the filesystem server
// presents ownership, mode and file type (bind and directory named mounts
// only). The zero value keeps the default, strict.
type StatVirtualization string

const (
	// StatVirtualizationDefault keeps the default (strict).
	StatVirtualizationDefault StatVirtualization = ""
	// StatVirtualizationStrict keeps guest metadata in a record on each host
	// file; the mount root must support xattrs.
	StatVirtualizationStrict StatVirtualization = "strict"
	// StatVirtualizationRelaxed is strict without the xattr probe, with real
	// host symlinks.
	StatVirtualizationRelaxed StatVirtualization = "relaxed"
	// StatVirtualizationOff shows raw host metadata.
	StatVirtualizationOff StatVirtualization = "off"
)

// HostPermissions is the per-mount policy for whether guest chmod reaches
// the host files (bind and directory named mounts only). The zero value
// keeps the default, private.
type HostPermissions string

const (
	// HostPermissionsDefault keeps the default (private).
	HostPermissionsDefault HostPermissions = ""
	// HostPermissionsPrivate keeps guest chmod in the record only; host
	// files stay 0600/0700.
	HostPermissionsPrivate HostPermissions = "private"
	// HostPermissionsMirror also applies rwx bits to host files, with a
	// floor of 0600/0700 (never setuid/setgid, never uid/gid).
	HostPermissionsMirror HostPermissions = "mirror"
)

// MountKind is the flavour of a MountConfig.
type MountKind uint8

const (
	// MountKindBind is a host bind mount.
	MountKindBind MountKind = iota + 1
	// MountKindNamed is a named persistent volume.
	MountKindNamed
	// MountKindTmpfs is an in-memory tmpfs.
	MountKindTmpfs
	// MountKindDisk is a host disk image.
	MountKindDisk
)

// String is "bind", "named", "tmpfs" or "disk" ("" for the zero value).
func (k MountKind) String() string {
	switch k {
	case MountKindBind:
		return "bind"
	case MountKindNamed:
		return "named"
	case MountKindTmpfs:
		return "tmpfs"
	case MountKindDisk:
		return "disk"
	}
	return ""
}

// MountConfig is one mount, made by the Mount factory and passed to
// WithMounts. The factory sets the kind and keeps the flavours apart; the
// Rust library validates the whole config when the sandbox is created (a
// policy on a tmpfs or disk mount, fields of another flavour, a config
// naming two sources are refused with ErrInvalidMount).
type MountConfig struct {
	kind MountKind

	// Bind is the host path of a bind mount.
	Bind string
	// Named is the volume name of a named mount.
	Named string
	// NamedMode is "existing" (also when empty), "create" or "ensure-exists".
	NamedMode string
	// NamedKind is "dir" or "disk" for a volume provisioned by the mount.
	NamedKind string
	// QuotaMiB is the quota of a provisioned directory volume.
	QuotaMiB uint32
	// Tmpfs is set for tmpfs mounts.
	Tmpfs bool
	// Disk is the host path of a disk image.
	Disk string
	// Format is the disk image format ("raw", "qcow2", "vmdk"; empty: from
	// the file extension).
	Format string
	// Fstype is the filesystem inside the image (empty: detected).
	Fstype string
	// Readonly mounts read-only.
	Readonly bool
	// Noexec prevents direct execution from the mount.
	Noexec bool
	// Nosuid ignores setuid and setgid bits.
	Nosuid bool
	// Nodev ignores device files.
	Nodev bool
	// SizeMiB is the tmpfs size limit, or the capacity of a provisioned disk
	// volume.
	SizeMiB uint32
	// StatVirtualization is the bind/named stat-virtualization policy.
	StatVirtualization StatVirtualization
	// HostPermissions is the bind/named host-permission policy.
	HostPermissions HostPermissions
}

// Kind is the mount's flavour.
func (m MountConfig) Kind() MountKind { return m.kind }

// MountOptions tunes Mount.Bind, Mount.Named and Mount.NamedWith.
type MountOptions struct {
	// Readonly mounts read-only; the filesystem server also refuses writes.
	Readonly bool
	// Noexec prevents direct execution from the mount.
	Noexec bool
	// Nosuid ignores setuid and setgid bits.
	Nosuid bool
	// Nodev ignores device files.
	Nodev bool
	// StatVirtualization is the stat-virtualization policy.
	StatVirtualization StatVirtualization
	// HostPermissions is the host-permission policy.
	HostPermissions HostPermissions
}

// NamedVolumeOptions tunes the provisioning of a named volume by
// Mount.NamedWith when the sandbox is created.
type NamedVolumeOptions struct {
	// Mode is "existing" (also when empty), "create" (fails if the volume
	// exists) or "ensure-exists" (creates it if missing, reuses a
	// compatible one, never changes an existing one).
	Mode string
	// Kind is "dir" or "disk"; empty is dir unless SizeMiB is given.
	Kind string
	// SizeMiB is the disk capacity; needed to create a disk volume.
	SizeMiB uint32
	// QuotaMiB is a directory volume's quota.
	QuotaMiB uint32
}

// TmpfsOptions tunes Mount.Tmpfs.
type TmpfsOptions struct {
	// SizeMiB is the size limit (zero: the kernel default).
	SizeMiB uint32
	// Readonly mounts read-only.
	Readonly bool
	// Noexec prevents direct execution from the mount.
	Noexec bool
	// Nosuid ignores setuid and setgid bits.
	Nosuid bool
	// Nodev ignores device files.
	Nodev bool
}

// DiskOptions tunes Mount.Disk.
type DiskOptions struct {
	// Format is "raw", "qcow2" or "vmdk"; empty takes it from the extension.
	Format string
	// Fstype is the filesystem inside ("ext4", "xfs"); empty detects it.
	Fstype string
	// Readonly mounts read-only (and attaches the image read-only).
	Readonly bool
	// Noexec prevents direct execution from the mount.
	Noexec bool
	// Nosuid ignores setuid and setgid bits.
	Nosuid bool
	// Nodev ignores device files.
	Nodev bool
}

// MountFactory makes MountConfig values; use it through Mount.
type MountFactory struct{}

// Mount is the factory of mount configurations:
//
//	WithMounts(map[string]MountConfig{
//		"/data": Mount.Named("data", MountOptions{}),
//		"/tmp":  Mount.Tmpfs(TmpfsOptions{SizeMiB: 64}),
//	})
var Mount MountFactory

// Bind mounts a host directory or file.
func (MountFactory) Bind(hostPath string, opts MountOptions) MountConfig {
	m := withMountOptions(opts)
	m.kind, m.Bind = MountKindBind, hostPath
	return m
}

// Named mounts an existing named volume.
func (MountFactory) Named(name string, opts MountOptions) MountConfig {
	m := withMountOptions(opts)
	m.kind, m.Named = MountKindNamed, name
	return m
}

// NamedWith mounts a named volume, provisioning it as namedOpts says.
func (MountFactory) NamedWith(name string, opts MountOptions, namedOpts NamedVolumeOptions) MountConfig {
	m := withMountOptions(opts)
	m.kind, m.Named = MountKindNamed, name
	m.NamedMode, m.NamedKind = namedOpts.Mode, namedOpts.Kind
	m.SizeMiB, m.QuotaMiB = namedOpts.SizeMiB, namedOpts.QuotaMiB
	return m
}

// Tmpfs mounts a fresh in-memory filesystem.
func (MountFactory) Tmpfs(opts TmpfsOptions) MountConfig {
	return MountConfig{
		kind: MountKindTmpfs, Tmpfs: true, SizeMiB: opts.SizeMiB,
		Readonly: opts.Readonly, Noexec: opts.Noexec, Nosuid: opts.Nosuid, Nodev: opts.Nodev,
	}
}

// Disk mounts the filesystem inside a host disk image.
func (MountFactory) Disk(hostPath string, opts DiskOptions) MountConfig {
	return MountConfig{
		kind: MountKindDisk, Disk: hostPath, Format: opts.Format, Fstype: opts.Fstype,
		Readonly: opts.Readonly, Noexec: opts.Noexec, Nosuid: opts.Nosuid, Nodev: opts.Nodev,
	}
}

func withMountOptions(o MountOptions) MountConfig {
	return MountConfig{
		Readonly: o.Readonly, Noexec: o.Noexec, Nosuid: o.Nosuid, Nodev: o.Nodev,
		StatVirtualization: o.StatVirtualization, HostPermissions: o.HostPermissions,
	}
}

// mountWire is a MountConfig as the native library reads it.
type mountWire struct {
	Kind               string             `json:"kind,omitempty"`
	Bind               string             `json:"bind,omitempty"`
	Named              string             `json:"named,omitempty"`
	NamedMode          string             `json:"named_mode,omitempty"`
	NamedKind          string             `json:"named_kind,omitempty"`
	QuotaMiB           uint32             `json:"quota_mib,omitempty"`
	Tmpfs              bool               `json:"tmpfs,omitempty"`
	Disk               string             `json:"disk,omitempty"`
	Format             string             `json:"format,omitempty"`
	Fstype             string             `json:"fstype,omitempty"`
	Readonly           bool               `json:"readonly,omitempty"`
	Noexec             bool               `json:"noexec,omitempty"`
	Nosuid             bool               `json:"nosuid,omitempty"`
	Nodev              bool               `json:"nodev,omitempty"`
	SizeMiB            uint32             `json:"size_mib,omitempty"`
	StatVirtualization StatVirtualization `json:"stat_virtualization,omitempty"`
	HostPermissions    HostPermissions    `json:"host_permissions,omitempty"`
}

func (m MountConfig) wire() mountWire {
	return mountWire{
		Kind: m.kind.String(), Bind: m.Bind, Named: m.Named, NamedMode: m.NamedMode,
		NamedKind: m.NamedKind, QuotaMiB: m.QuotaMiB, Tmpfs: m.Tmpfs, Disk: m.Disk,
		Format: m.Format, Fstype: m.Fstype, Readonly: m.Readonly, Noexec: m.Noexec,
		Nosuid: m.Nosuid, Nodev: m.Nodev, SizeMiB: m.SizeMiB,
		StatVirtualization: m.StatVirtualization, HostPermissions: m.HostPermissions,
	}
}
