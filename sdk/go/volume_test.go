package microsandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCreateGetListRemove(t *testing.T) {
	ctx := context.Background()
	name := uniqueName("vol")
	before := time.Now().Add(-time.Second)
	v, err := CreateVolume(ctx, name, WithVolumeQuota(64), WithVolumeLabels(map[string]string{"team": "ci"}),
		WithVolumeLabels(map[string]string{"tier": "test"}))
	if err != nil {
		t.Fatal(err)
	}
	if v.Name() != name || v.Path() != filepath.Join(os.Getenv("MSB_HOME"), "volumes", name) {
		t.Fatalf("volume %q at %q", v.Name(), v.Path())
	}
	if st, err := os.Stat(v.Path()); err != nil || !st.IsDir() {
		t.Fatalf("data directory: %v", err)
	}
	h, err := GetVolume(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if h.Name() != name || h.Path() != v.Path() || h.Kind() != VolumeKindDir {
		t.Fatalf("handle %q %q %q", h.Name(), h.Path(), h.Kind())
	}
	if q := h.QuotaMiB(); q == nil || *q != 64 {
		t.Fatalf("quota %v", q)
	}
	if h.CapacityBytes() != nil || h.DiskFormat() != nil || h.DiskFstype() != nil {
		t.Fatal("a directory volume has disk fields")
	}
	if l := h.Labels(); len(l) != 2 || l["team"] != "ci" || l["tier"] != "test" {
		t.Fatalf("labels %v", l)
	}
	if c := h.CreatedAt(); c.Before(before) || c.After(time.Now().Add(time.Second)) {
		t.Fatalf("created at %v", c)
	}
	if h.FS().Root() != v.Path() || v.FS().Root() != v.Path() {
		t.Fatal("FS root is not the volume path")
	}

	// Newest first.
	second := newVolume(t, "vol2")
	list, err := ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, h := range list {
		pos[h.Name()] = i
	}
	if pos[second.Name()] >= pos[name] {
		t.Fatalf("list order %v", pos)
	}

	if err := RemoveVolume(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.Path()); !os.IsNotExist(err) {
		t.Fatalf("data directory left: %v", err)
	}
	_, err = GetVolume(ctx, name)
	wantKind(t, err, ErrVolumeNotFound)
	if err.Error() != "volume not found: "+name {
		t.Fatalf("message %q", err)
	}
	wantKind(t, RemoveVolume(ctx, name), ErrVolumeNotFound)
}

func TestNoUnlimitedQuotaAndNoLabels(t *testing.T) {
	v := newVolume(t, "plain", WithVolumeQuota(0))
	h, err := GetVolume(context.Background(), v.Name())
	if err != nil {
		t.Fatal(err)
	}
	if h.QuotaMiB() != nil || len(h.Labels()) != 0 || h.Labels() == nil {
		t.Fatalf("quota %v labels %v", h.QuotaMiB(), h.Labels())
	}
}

func TestAlreadyExists(t *testing.T) {
	v := newVolume(t, "dup")
	_, err := CreateVolume(context.Background(), v.Name())
	wantKind(t, err, ErrVolumeAlreadyExists)
	if err.Error() != "volume already exists: "+v.Name() {
		t.Fatalf("message %q", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Kind != ErrVolumeAlreadyExists {
		t.Fatalf("errors.As: %#v", err)
	}
}

func TestInvalidNamesAndConfigs(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"", "-x", "a/b", "..", "a b", strings.Repeat("x", 300)} {
		_, err := CreateVolume(ctx, name)
		wantKind(t, err, ErrInvalidName)
	}
	_, err := GetVolume(ctx, "../etc")
	wantKind(t, err, ErrInvalidName)

	cases := []struct {
		what string
		opts []VolumeOption
	}{
		{"disk without size", []VolumeOption{WithVolumeKind(VolumeKindDisk)}},
		{"disk with quota", []VolumeOption{WithVolumeKind(VolumeKindDisk), WithVolumeSize(64), WithVolumeQuota(10)}},
		{"dir with size", []VolumeOption{WithVolumeSize(64)}},
		{"disk too small", []VolumeOption{WithVolumeKind(VolumeKindDisk), WithVolumeSize(1)}},
		{"unknown kind", []VolumeOption{WithVolumeKind("zfs")}},
		{"bad label", []VolumeOption{WithVolumeLabels(map[string]string{"": "x"})}},
	}
	for _, c := range cases {
		name := uniqueName("bad")
		_, err := CreateVolume(ctx, name, c.opts...)
		if !IsKind(err, ErrInvalidConfig) {
			t.Errorf("%s: want ErrInvalidConfig, got %v", c.what, err)
		}
		if _, err := GetVolume(ctx, name); !IsKind(err, ErrVolumeNotFound) {
			t.Errorf("%s: left a volume behind: %v", c.what, err)
		}
	}
}

func TestDiskVolume(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mkfs.ext4"); err != nil {
		t.Skip("skipped: disk volumes need mkfs.ext4 (e2fsprogs)")
	}
	v := newVolume(t, "disk", WithVolumeKind(VolumeKindDisk), WithVolumeSize(64))
	h, err := GetVolume(context.Background(), v.Name())
	if err != nil {
		t.Fatal(err)
	}
	if h.Kind() != VolumeKindDisk || h.QuotaMiB() != nil {
		t.Fatalf("kind %v quota %v", h.Kind(), h.QuotaMiB())
	}
	if c := h.CapacityBytes(); c == nil || *c != 64<<20 {
		t.Fatalf("capacity %v", c)
	}
	if f, fs := h.DiskFormat(), h.DiskFstype(); f == nil || *f != "raw" || fs == nil || *fs != "ext4" {
		t.Fatalf("format %v fstype %v", f, fs)
	}
	if st, err := os.Stat(filepath.Join(v.Path(), "disk.raw")); err != nil || st.Size() != 64<<20 {
		t.Fatalf("image: %v", err)
	}
}

func TestUsedBytesCountsWrites(t *testing.T) {
	v := newVolume(t, "used")
	if err := v.FS().Write("blob", make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	h, err := GetVolume(context.Background(), v.Name())
	if err != nil {
		t.Fatal(err)
	}
	if h.UsedBytes() < 1<<20 {
		t.Fatalf("used %d", h.UsedBytes())
	}
}

func TestVolumeAndHandleRemove(t *testing.T) {
	ctx := context.Background()
	v, err := CreateVolume(ctx, uniqueName("rm"))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	wantKind(t, v.Remove(ctx), ErrVolumeNotFound)
	v, err = CreateVolume(ctx, uniqueName("rm"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := GetVolume(ctx, v.Name())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = GetVolume(ctx, v.Name())
	wantKind(t, err, ErrVolumeNotFound)
}

func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	name := uniqueName("cancel")
	_, err := CreateVolume(ctx, name)
	wantKind(t, err, ErrCancelled)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("not context.Canceled: %v", err)
	}
	if _, err := GetVolume(context.Background(), name); !IsKind(err, ErrVolumeNotFound) {
		t.Fatalf("a cancelled create made the volume: %v", err)
	}
	_, err = ListVolumes(ctx)
	wantKind(t, err, ErrCancelled)
}

func TestParallelCreatesOfOneName(t *testing.T) {
	name := uniqueName("race")
	t.Cleanup(func() { _ = RemoveVolume(context.Background(), name) })
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		go func() {
			_, err := CreateVolume(context.Background(), name)
			errs <- err
		}()
	}
	ok := 0
	for i := 0; i < 10; i++ {
		if err := <-errs; err == nil {
			ok++
		} else if !IsKind(err, ErrVolumeAlreadyExists) {
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates succeeded", ok)
	}
}

func TestErrorKindsAreDistinctErrors(t *testing.T) {
	err := &Error{Kind: ErrPathEscape, Message: "path escapes volume root: ../x"}
	if !errors.Is(err, ErrPathEscape) || errors.Is(err, ErrVolumeNotFound) {
		t.Fatal("errors.Is does not follow the kind")
	}
	if kindFromWire("NoSuchKind") != ErrUnknown || ErrUnknown.String() != "Unknown" {
		t.Fatal("unknown kinds")
	}
	for k, n := range kindNames {
		if kindFromWire(n) != k || k.String() != n {
			t.Fatalf("kind %d name %q", k, n)
		}
	}
}
