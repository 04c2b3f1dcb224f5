package microsandbox

import (
	"context"
	"testing"
)

func TestMountFactories(t *testing.T) {
	opts := MountOptions{Readonly: true, Nodev: true, StatVirtualization: StatVirtualizationRelaxed, HostPermissions: HostPermissionsMirror}
	b := Mount.Bind("/srv/data", opts)
	if b.Kind() != MountKindBind || b.Bind != "/srv/data" || !b.Readonly || !b.Nodev || b.Noexec ||
		b.StatVirtualization != StatVirtualizationRelaxed || b.HostPermissions != HostPermissionsMirror {
		t.Fatalf("bind %+v", b)
	}
	n := Mount.Named("data", MountOptions{Noexec: true})
	if n.Kind() != MountKindNamed || n.Named != "data" || !n.Noexec || n.NamedMode != "" {
		t.Fatalf("named %+v", n)
	}
	nw := Mount.NamedWith("db", MountOptions{}, NamedVolumeOptions{Mode: "ensure-exists", Kind: "disk", SizeMiB: 128})
	if nw.Kind() != MountKindNamed || nw.NamedMode != "ensure-exists" || nw.NamedKind != "disk" || nw.SizeMiB != 128 {
		t.Fatalf("named with %+v", nw)
	}
	tm := Mount.Tmpfs(TmpfsOptions{SizeMiB: 64, Nosuid: true})
	if tm.Kind() != MountKindTmpfs || !tm.Tmpfs || tm.SizeMiB != 64 || !tm.Nosuid || tm.StatVirtualization != "" {
		t.Fatalf("tmpfs %+v", tm)
	}
	d := Mount.Disk("/img/data.qcow2", DiskOptions{Format: "qcow2", Fstype: "ext4", Readonly: true})
	if d.Kind() != MountKindDisk || d.Disk != "/img/data.qcow2" || d.Format != "qcow2" || d.Fstype != "ext4" || !d.Readonly {
		t.Fatalf("disk %+v", d)
	}
	// Zero policies are left out, so the Rust defaults (strict, private) apply.
	if w := Mount.Bind("/x", MountOptions{}).wire(); w.StatVirtualization != "" || w.HostPermissions != "" {
		t.Fatalf("wire %+v", w)
	}
	if (MountConfig{}).Kind() != 0 || MountKindDisk.String() != "disk" {
		t.Fatal("kinds")
	}
}

// TestMountValidation checks that the Rust library refuses bad mounts when
// the sandbox is built, before anything is recorded or created (no root
// needed: nothing starts).
func TestMountValidation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	policy := MountConfig{StatVirtualization: StatVirtualizationRelaxed}
	tmpfsPolicy := Mount.Tmpfs(TmpfsOptions{})
	tmpfsPolicy.StatVirtualization = policy.StatVirtualization
	diskPolicy := Mount.Disk(dir+"/x.img", DiskOptions{})
	diskPolicy.HostPermissions = HostPermissionsMirror
	twoSources := Mount.Bind(dir, MountOptions{})
	twoSources.Named = "data"
	handMadeTwo := MountConfig{Bind: dir, Tmpfs: true}
	switched := Mount.Bind(dir, MountOptions{})
	switched.Bind, switched.Named = "", "data"
	bindQuota := Mount.Bind(dir, MountOptions{})
	bindQuota.QuotaMiB = 10
	cases := []struct {
		what   string
		mounts map[string]MountConfig
		kind   ErrorKind
	}{
		{"policy on tmpfs", map[string]MountConfig{"/t": tmpfsPolicy}, ErrInvalidMount},
		{"policy on disk", map[string]MountConfig{"/d": diskPolicy}, ErrInvalidMount},
		{"off with mirror", map[string]MountConfig{"/b": Mount.Bind(dir, MountOptions{StatVirtualization: StatVirtualizationOff, HostPermissions: HostPermissionsMirror})}, ErrInvalidMount},
		{"unknown policy", map[string]MountConfig{"/b": Mount.Bind(dir, MountOptions{StatVirtualization: "lax"})}, ErrInvalidMount},
		{"two sources", map[string]MountConfig{"/b": twoSources}, ErrInvalidMount},
		{"hand-made, two sources", map[string]MountConfig{"/b": handMadeTwo}, ErrInvalidMount},
		{"bind kind, named source", map[string]MountConfig{"/b": switched}, ErrInvalidMount},
		{"no source", map[string]MountConfig{"/b": {}}, ErrInvalidMount},
		{"quota on bind", map[string]MountConfig{"/b": bindQuota}, ErrInvalidMount},
		{"relative guest path", map[string]MountConfig{"data": Mount.Tmpfs(TmpfsOptions{})}, ErrInvalidMount},
		{"guest root", map[string]MountConfig{"/": Mount.Tmpfs(TmpfsOptions{})}, ErrInvalidMount},
		{"guest dotdot", map[string]MountConfig{"/a/../b": Mount.Tmpfs(TmpfsOptions{})}, ErrInvalidMount},
		{"duplicate guest path", map[string]MountConfig{"/a": Mount.Tmpfs(TmpfsOptions{}), "/a/": Mount.Tmpfs(TmpfsOptions{})}, ErrInvalidMount},
		{"unknown named mode", map[string]MountConfig{"/n": Mount.NamedWith("v", MountOptions{}, NamedVolumeOptions{Mode: "maybe"})}, ErrInvalidMount},
		{"unknown named kind", map[string]MountConfig{"/n": Mount.NamedWith("v", MountOptions{}, NamedVolumeOptions{Kind: "zfs"})}, ErrInvalidMount},
		{"create disk without size", map[string]MountConfig{"/n": Mount.NamedWith("v", MountOptions{}, NamedVolumeOptions{Mode: "create", Kind: "disk"})}, ErrInvalidMount},
		{"size on a dir volume", map[string]MountConfig{"/n": Mount.NamedWith("v", MountOptions{}, NamedVolumeOptions{Mode: "create", Kind: "dir", SizeMiB: 64})}, ErrInvalidMount},
		{"quota on a disk volume", map[string]MountConfig{"/n": Mount.NamedWith("v", MountOptions{}, NamedVolumeOptions{Mode: "create", Kind: "disk", SizeMiB: 64, QuotaMiB: 1})}, ErrInvalidMount},
		{"policy on a disk volume", map[string]MountConfig{"/n": Mount.NamedWith("v", MountOptions{HostPermissions: HostPermissionsMirror}, NamedVolumeOptions{Kind: "disk"})}, ErrInvalidMount},
		{"bad volume name", map[string]MountConfig{"/n": Mount.Named("../etc", MountOptions{})}, ErrInvalidName},
		{"unknown disk format", map[string]MountConfig{"/d": Mount.Disk(dir+"/x.img", DiskOptions{Format: "vdi"})}, ErrInvalidMount},
		{"bad fstype", map[string]MountConfig{"/d": Mount.Disk(dir+"/x.img", DiskOptions{Fstype: "ext4,x"})}, ErrInvalidMount},
	}
	for _, c := range cases {
		name := uniqueName("badmount")
		_, err := CreateSandbox(ctx, name, WithMounts(c.mounts))
		if !IsKind(err, c.kind) {
			t.Errorf("%s: want %v, got %v", c.what, c.kind, err)
			continue
		}
		if _, err := GetSandbox(ctx, name); !IsKind(err, ErrSandboxNotFound) {
			t.Errorf("%s: a sandbox was recorded: %v", c.what, err)
		}
	}
	if _, err := GetVolume(ctx, "v"); !IsKind(err, ErrVolumeNotFound) {
		t.Errorf("a refused mount created its volume: %v", err)
	}
}

func TestSandboxSettingsValidation(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		what string
		opts []SandboxOption
		kind ErrorKind
	}{
		{"too little memory", []SandboxOption{WithMemory(1)}, ErrInvalidConfig},
		{"relative workdir", []SandboxOption{WithWorkdir("data")}, ErrInvalidConfig},
		{"bad env name", []SandboxOption{WithEnv(map[string]string{"A=B": "x"})}, ErrInvalidConfig},
		{"missing rootfs", []SandboxOption{WithBindRootfs("/nonexistent/rootfs")}, ErrHostPath},
	}
	for _, c := range cases {
		_, err := CreateSandbox(ctx, uniqueName("badsb"), c.opts...)
		if !IsKind(err, c.kind) {
			t.Errorf("%s: want %v, got %v", c.what, c.kind, err)
		}
	}
	_, err := CreateSandbox(ctx, "bad/name")
	wantKind(t, err, ErrInvalidName)
	_, err = GetSandbox(ctx, uniqueName("nosb"))
	wantKind(t, err, ErrSandboxNotFound)
	wantKind(t, RemoveSandbox(ctx, uniqueName("nosb")), ErrSandboxNotFound)
}
