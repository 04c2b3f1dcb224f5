package microsandbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	msb "github.com/msb/microsandbox-go"
)

// rel shows a host path relative to the msb home, so the output is stable.
func rel(path string) string {
	r, _ := filepath.Rel(os.Getenv("MSB_HOME"), path)
	return r
}

func ExampleCreateVolume() {
	ctx := context.Background()
	v, err := msb.CreateVolume(ctx, "cache",
		msb.WithVolumeQuota(512),
		msb.WithVolumeLabels(map[string]string{"team": "ci"}))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(v.Name(), rel(v.Path()))

	_, err = msb.CreateVolume(ctx, "cache")
	fmt.Println(errors.Is(err, msb.ErrVolumeAlreadyExists), err)

	db, err := msb.CreateVolume(ctx, "db", msb.WithVolumeKind(msb.VolumeKindDisk), msb.WithVolumeSize(128))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(db.Name(), rel(db.Path()))
	_ = v.Remove(ctx)
	_ = db.Remove(ctx)
	// Output:
	// cache volumes/cache
	// true volume already exists: cache
	// db volumes/db
}

func ExampleGetVolume() {
	ctx := context.Background()
	_, _ = msb.CreateVolume(ctx, "data", msb.WithVolumeQuota(64), msb.WithVolumeLabels(map[string]string{"env": "dev"}))
	defer msb.RemoveVolume(ctx, "data")

	h, err := msb.GetVolume(ctx, "data")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(h.Name(), h.Kind(), *h.QuotaMiB(), h.Labels()["env"], h.CapacityBytes() == nil, !h.CreatedAt().IsZero())

	_, err = msb.GetVolume(ctx, "missing")
	fmt.Println(msb.IsKind(err, msb.ErrVolumeNotFound), err)
	// Output:
	// data dir 64 dev true true
	// true volume not found: missing
}

func ExampleListVolumes() {
	ctx := context.Background()
	for _, name := range []string{"first", "second"} {
		_, _ = msb.CreateVolume(ctx, name, msb.WithVolumeLabels(map[string]string{"example": "list"}))
		defer msb.RemoveVolume(ctx, name)
	}
	list, err := msb.ListVolumes(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, h := range list {
		if h.Labels()["example"] == "list" {
			fmt.Println(h.Name(), h.Kind(), h.UsedBytes())
		}
	}
	// Output:
	// second dir 0
	// first dir 0
}

func ExampleRemoveVolume() {
	ctx := context.Background()
	_, _ = msb.CreateVolume(ctx, "scratch")
	fmt.Println(msb.RemoveVolume(ctx, "scratch"))
	err := msb.RemoveVolume(ctx, "scratch")
	fmt.Println(errors.Is(err, msb.ErrVolumeNotFound), err)
	// Output:
	// <nil>
	// true volume not found: scratch
}

func ExampleVolume_FS() {
	ctx := context.Background()
	v, err := msb.CreateVolume(ctx, "files")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer v.Remove(ctx)

	vfs := v.FS()
	fmt.Println(vfs.Root() == v.Path())
	_ = vfs.Mkdir("config/app")
	_ = vfs.WriteString("config/app/settings.toml", "debug = true\n")
	s, _ := vfs.ReadString("config/app/settings.toml")
	fmt.Print(s)
	ok, _ := vfs.Exists("config/app")
	fmt.Println(ok)

	_, err = vfs.Read("../../etc/passwd")
	fmt.Println(errors.Is(err, msb.ErrPathEscape), err)
	err = vfs.WriteString("/etc/evil", "x")
	fmt.Println(errors.Is(err, msb.ErrPathEscape))

	_ = vfs.RemoveAll("config")
	ok, _ = vfs.Exists("config")
	fmt.Println(ok)
	// Output:
	// true
	// debug = true
	// true
	// true path escapes volume root: ../../etc/passwd
	// true
	// false
}

func ExampleVolume_Remove() {
	ctx := context.Background()
	v, _ := msb.CreateVolume(ctx, "temp")
	fmt.Println(v.Remove(ctx))
	_, err := msb.GetVolume(ctx, "temp")
	fmt.Println(errors.Is(err, msb.ErrVolumeNotFound))
	// Output:
	// <nil>
	// true
}

// run creates sandbox name with mounts, runs command in it, prints its
// output, and stops and removes it (needs root and the msb binary).
func run(name string, mounts map[string]msb.MountConfig, command string) {
	ctx := context.Background()
	sb, err := msb.CreateSandbox(ctx, name, msb.WithMounts(mounts))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer msb.RemoveSandbox(ctx, name)
	defer sb.Stop(ctx)
	out, err := sb.Shell(ctx, command)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(out.Stdout(), out.Stderr())
}

func ExampleMountFactory_Bind() {
	// A bind keeps host owners and modes: the sandbox's root is an
	// unprivileged host user, so the directory must be readable by others.
	dir, _ := os.MkdirTemp("", "bind-example-")
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)
	_ = os.WriteFile(filepath.Join(dir, "input.txt"), []byte("from the host\n"), 0o644)

	m := msb.Mount.Bind(dir, msb.MountOptions{Readonly: true})
	fmt.Println(m.Kind() == msb.MountKindBind, m.Readonly)
	run("bind-example", map[string]msb.MountConfig{"/input": m},
		"cat /input/input.txt; touch /input/x 2>/dev/null || echo read-only")
	// Output:
	// true true
	// from the host
	// read-only
}

func ExampleMountFactory_Named() {
	ctx := context.Background()
	v, _ := msb.CreateVolume(ctx, "shared")
	defer v.Remove(ctx)

	run("named-example", map[string]msb.MountConfig{
		"/shared": msb.Mount.Named("shared", msb.MountOptions{}),
	}, "echo written in the sandbox > /shared/out.txt")
	s, _ := v.FS().ReadString("out.txt")
	fmt.Print(s)
	// Output:
	// written in the sandbox
}

func ExampleMountFactory_NamedWith() {
	ctx := context.Background()
	defer msb.RemoveVolume(ctx, "build-cache")
	cache := msb.Mount.NamedWith("build-cache", msb.MountOptions{},
		msb.NamedVolumeOptions{Mode: "ensure-exists", QuotaMiB: 256})

	// The first sandbox creates the volume, the second reuses it.
	run("named-with-1", map[string]msb.MountConfig{"/cache": cache}, "echo 1 > /cache/runs")
	run("named-with-2", map[string]msb.MountConfig{"/cache": cache}, "echo 2 >> /cache/runs; cat /cache/runs")
	h, _ := msb.GetVolume(ctx, "build-cache")
	fmt.Println(h.Kind(), *h.QuotaMiB())

	_, err := msb.CreateSandbox(ctx, "named-with-3", msb.WithMounts(map[string]msb.MountConfig{
		"/cache": msb.Mount.NamedWith("build-cache", msb.MountOptions{}, msb.NamedVolumeOptions{Mode: "create"}),
	}))
	fmt.Println(errors.Is(err, msb.ErrVolumeAlreadyExists))
	// Output:
	// 1
	// 2
	// dir 256
	// true
}

func ExampleMountFactory_Tmpfs() {
	run("tmpfs-example", map[string]msb.MountConfig{
		"/scratch": msb.Mount.Tmpfs(msb.TmpfsOptions{SizeMiB: 64, Noexec: true}),
	}, "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo fast > /scratch/f; cat /scratch/f")

	// Policies belong to bind and named mounts only.
	bad := msb.Mount.Tmpfs(msb.TmpfsOptions{})
	bad.StatVirtualization = msb.StatVirtualizationRelaxed
	_, err := msb.CreateSandbox(context.Background(), "tmpfs-bad", msb.WithMounts(map[string]msb.MountConfig{"/t": bad}))
	fmt.Println(errors.Is(err, msb.ErrInvalidMount))
	// Output:
	// tmpfs
	// fast
	// true
}

func ExampleMountFactory_Disk() {
	dir, _ := os.MkdirTemp("", "disk-example-")
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "data.img")
	_ = os.WriteFile(img, nil, 0o644)
	_ = os.Truncate(img, 64<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		fmt.Println(strings.TrimSpace(string(out)), err)
		return
	}

	run("disk-example", map[string]msb.MountConfig{
		"/data": msb.Mount.Disk(img, msb.DiskOptions{Format: "raw", Fstype: "ext4"}),
	}, "grep ' /data ' /proc/mounts | cut -d' ' -f3; echo kept > /data/f; cat /data/f")
	// Output:
	// ext4
	// kept
}
