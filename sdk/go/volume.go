package microsandbox

import (
	"context"
	"time"
)

// VolumeKind is what backs a named volume.
type VolumeKind string

const (
	// VolumeKindDir is a directory-backed named volume (the default).
	VolumeKindDir VolumeKind = "dir"
	// VolumeKindDisk is a raw ext4 disk-backed named volume.
	VolumeKindDisk VolumeKind = "disk"
)

// VolumeConfig is what the VolumeOption functions fill in. CreateVolume
// starts from the zero value; a caller holding a VolumeConfig can pass it
// as an option of its own: func(c *VolumeConfig) { *c = cfg }.
type VolumeConfig struct {
	// QuotaMiB is the maximum storage size in MiB; zero is unlimited.
	QuotaMiB uint32
	// Kind is VolumeKindDir (also when empty) or VolumeKindDisk.
	Kind VolumeKind
	// SizeMiB is the capacity of a VolumeKindDisk volume in MiB.
	SizeMiB uint32
	// Labels are metadata labels.
	Labels map[string]string
}

// VolumeOption configures CreateVolume.
type VolumeOption func(*VolumeConfig)

// WithVolumeKind selects VolumeKindDir (the default) or VolumeKindDisk.
func WithVolumeKind(kind VolumeKind) VolumeOption {
	return func(c *VolumeConfig) { c.Kind = kind }
}

// WithVolumeSize sets the capacity in MiB of a VolumeKindDisk volume.
func WithVolumeSize(mebibytes uint32) VolumeOption {
	return func(c *VolumeConfig) { c.SizeMiB = mebibytes }
}

// WithVolumeQuota sets the quota in MiB of a directory volume (zero:
// unlimited). The quota is a hard limit shared by every user of the volume.
func WithVolumeQuota(mebibytes uint32) VolumeOption {
	return func(c *VolumeConfig) { c.QuotaMiB = mebibytes }
}

// WithVolumeLabels adds metadata labels; later calls add to earlier ones.
func WithVolumeLabels(labels map[string]string) VolumeOption {
	return func(c *VolumeConfig) {
		if c.Labels == nil {
			c.Labels = make(map[string]string, len(labels))
		}
		for k, v := range labels {
			c.Labels[k] = v
		}
	}
}

// Volume is a named persistent volume, as returned by CreateVolume.
type Volume struct {
	name string
	path string
}

// Name is the volume's name.
func (v *Volume) Name() string { return v.name }

// Path is the host path of the volume: the data directory of a directory
// volume, the folder holding disk.raw of a disk volume.
func (v *Volume) Path() string { return v.path }

// FS gives host-side access to the volume's files.
func (v *Volume) FS() *VolumeFs { return &VolumeFs{volume: v.name, root: v.path} }

// Remove deletes the volume, like RemoveVolume(ctx, v.Name()).
func (v *Volume) Remove(ctx context.Context) error { return RemoveVolume(ctx, v.name) }

// VolumeHandle is a volume's metadata, as GetVolume and ListVolumes return it.
type VolumeHandle struct {
	name, path    string
	kind          VolumeKind
	flags         uint8 // flagQuota, flagCapacity, flagCreated
	quotaMiB      uint32
	usedBytes     uint64
	capacityBytes uint64
	diskFormat    string
	diskFstype    string
	labels        string // encoded, as in the record
	createdAt     time.Time
}

// Name is the volume's name.
func (h *VolumeHandle) Name() string { return h.name }

// Path is the host path (see Volume.Path).
func (h *VolumeHandle) Path() string { return h.path }

// Kind is VolumeKindDir or VolumeKindDisk.
func (h *VolumeHandle) Kind() VolumeKind { return h.kind }

// QuotaMiB is the quota in MiB, nil if unlimited.
func (h *VolumeHandle) QuotaMiB() *uint32 {
	if h.flags&flagQuota == 0 {
		return nil
	}
	q := h.quotaMiB
	return &q
}

// UsedBytes is the space in use. From GetVolume a directory volume's tree
// is scanned now; from ListVolumes it is the shared usage counter.
func (h *VolumeHandle) UsedBytes() uint64 { return h.usedBytes }

// CapacityBytes is a disk volume's capacity, nil for directory volumes.
func (h *VolumeHandle) CapacityBytes() *uint64 {
	if h.flags&flagCapacity == 0 {
		return nil
	}
	c := h.capacityBytes
	return &c
}

// DiskFormat is "raw" for disk volumes, nil for directory volumes.
func (h *VolumeHandle) DiskFormat() *string { return optional(h.diskFormat) }

// DiskFstype is "ext4" for disk volumes, nil for directory volumes.
func (h *VolumeHandle) DiskFstype() *string { return optional(h.diskFstype) }

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Labels are the metadata labels: a new map at each call (never nil).
func (h *VolumeHandle) Labels() map[string]string { return decodeLabels(h.labels) }

// CreatedAt is the creation time, the zero value if unknown.
func (h *VolumeHandle) CreatedAt() time.Time { return h.createdAt }

// FS gives host-side access to the volume's files.
func (h *VolumeHandle) FS() *VolumeFs { return &VolumeFs{volume: h.name, root: h.path} }

// Remove deletes the volume, like RemoveVolume(ctx, h.Name()).
func (h *VolumeHandle) Remove(ctx context.Context) error { return RemoveVolume(ctx, h.name) }

// CreateVolume creates a named volume in the msb home ($MSB_HOME, else
// ~/.microsandbox). It returns an error of kind ErrVolumeAlreadyExists if
// the name is taken.
func CreateVolume(ctx context.Context, name string, opts ...VolumeOption) (*Volume, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	var c VolumeConfig
	for _, o := range opts {
		o(&c)
	}
	in := struct {
		Name     string            `json:"name"`
		Kind     VolumeKind        `json:"kind,omitempty"`
		SizeMiB  uint32            `json:"size_mib,omitempty"`
		QuotaMiB uint32            `json:"quota_mib,omitempty"`
		Labels   map[string]string `json:"labels,omitempty"`
	}{name, c.Kind, c.SizeMiB, c.QuotaMiB, c.Labels}
	var out struct {
		Name string `json:"name"`
		Path string `json:"path"`
	}
	if err := call("volume.create", in, &out); err != nil {
		return nil, err
	}
	return &Volume{name: out.Name, path: out.Path}, nil
}

type nameArg struct {
	Name string `json:"name"`
}

// GetVolume looks a volume up, with its usage counted now. It returns an
// error of kind ErrVolumeNotFound if there is no such volume.
func GetVolume(ctx context.Context, name string) (*VolumeHandle, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	hs, err := volumeRecords(&name)
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		return nil, &Error{Kind: ErrInternal, Message: "msb returned no volume record"}
	}
	return hs[0], nil
}

// ListVolumes returns every volume, newest first.
func ListVolumes(ctx context.Context) ([]*VolumeHandle, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	return volumeRecords(nil)
}

// RemoveVolume deletes a volume and its data. It is refused (ErrVolumeInUse)
// while a sandbox that exists, running or stopped, uses it.
func RemoveVolume(ctx context.Context, name string) error {
	if err := checkContext(ctx); err != nil {
		return err
	}
	return call("volume.remove", nameArg{name}, nil)
}
