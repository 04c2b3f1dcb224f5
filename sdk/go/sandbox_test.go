package microsandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// sandboxRoot is the host uid of a sandbox's root (IdMap::ROOTFUL): host
// directories bound into a sandbox must belong to it to be writable there.
const sandboxRoot = 1878982656

// newSandbox creates and starts a sandbox that is stopped and removed when
// the test ends.
func newSandbox(t *testing.T, prefix string, opts ...SandboxOption) *Sandbox {
	t.Helper()
	sb, err := CreateSandbox(context.Background(), uniqueName(prefix), opts...)
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t.Cleanup(func() {
		_ = sb.Stop(context.Background())
		_ = RemoveSandbox(context.Background(), sb.Name())
	})
	return sb
}

// shell runs command and fails the test unless it succeeds.
func shell(t *testing.T, sb *Sandbox, command string) string {
	t.Helper()
	out, err := sb.Shell(context.Background(), command)
	if err != nil {
		t.Fatalf("Shell(%q): %v", command, err)
	}
	if !out.Success() {
		t.Fatalf("Shell(%q): exit %d, stderr %q", command, out.ExitCode(), out.Stderr())
	}
	return out.Stdout()
}

func TestSandboxLifecycle(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	vol := uniqueName("sbvol")
	t.Cleanup(func() { _ = RemoveVolume(ctx, vol) })
	sb := newSandbox(t, "life",
		WithMounts(map[string]MountConfig{
			"/data": Mount.NamedWith(vol, MountOptions{}, NamedVolumeOptions{Mode: "ensure-exists", QuotaMiB: 16}),
		}),
		WithEnv(map[string]string{"MODE": "dev"}),
		WithWorkdir("/data"),
		WithMemory(256), WithCPUs(1))

	out, err := sb.Exec(ctx, "sh", []string{"-c", "echo $MODE > mode; pwd; cat mode; echo oops >&2; exit 3"})
	if err != nil {
		t.Fatal(err)
	}
	if out.Stdout() != "/data\ndev\n" || out.Stderr() != "oops\n" || out.ExitCode() != 3 || out.Success() {
		t.Fatalf("out %q err %q code %d", out.Stdout(), out.Stderr(), out.ExitCode())
	}
	if string(out.StdoutBytes()) != out.Stdout() || string(out.StderrBytes()) != out.Stderr() {
		t.Fatal("bytes and strings differ")
	}
	// The volume was provisioned with its quota and holds the file.
	h, err := GetVolume(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	if q := h.QuotaMiB(); q == nil || *q != 16 {
		t.Fatalf("quota %v", q)
	}
	if s, err := h.FS().ReadString("mode"); err != nil || s != "dev\n" {
		t.Fatalf("%q %v", s, err)
	}

	_, err = sb.Exec(ctx, "/no/such/program", nil)
	wantKind(t, err, ErrExecFailed)

	names, err := ListSandboxes(ctx)
	if err != nil || !slices.Contains(names, sb.Name()) {
		t.Fatalf("list %v %v", names, err)
	}
	if got, err := GetSandbox(ctx, sb.Name()); err != nil || got.Name() != sb.Name() {
		t.Fatalf("get %v %v", got, err)
	}
	_, err = CreateSandbox(ctx, sb.Name())
	wantKind(t, err, ErrSandboxAlreadyExists)
	wantKind(t, RemoveSandbox(ctx, sb.Name()), ErrSandboxStillRunning)
	wantKind(t, RemoveVolume(ctx, vol), ErrVolumeInUse)
	_, err = StartSandbox(ctx, sb.Name())
	wantKind(t, err, ErrSandboxAlreadyRunning)

	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = sb.Shell(ctx, "true")
	wantKind(t, err, ErrSandboxNotRunning)
	// A stopped sandbox still uses its volume.
	wantKind(t, RemoveVolume(ctx, vol), ErrVolumeInUse)

	again, err := StartSandbox(ctx, sb.Name())
	if err != nil {
		t.Fatal(err)
	}
	if s := shell(t, again, "cat /data/mode"); s != "dev\n" {
		t.Fatalf("after restart %q", s)
	}
	if err := again.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := RemoveSandbox(ctx, sb.Name()); err != nil {
		t.Fatal(err)
	}
	_, err = GetSandbox(ctx, sb.Name())
	wantKind(t, err, ErrSandboxNotFound)
	// The volume outlives the sandbox, then can go.
	if err := RemoveVolume(ctx, vol); err != nil {
		t.Fatal(err)
	}
}

func TestSandboxBindMounts(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	if err := os.Chown(dir, sandboxRoot, sandboxRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "from-host"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ro := t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("read me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sb := newSandbox(t, "bind", WithMounts(map[string]MountConfig{
		"/rw": Mount.Bind(dir, MountOptions{}),
		"/ro": Mount.Bind(ro, MountOptions{Readonly: true}),
	}))
	if s := shell(t, sb, "cat /rw/from-host && echo guest > /rw/from-guest && cat /ro/f"); s != "host\nread me\n" {
		t.Fatalf("%q", s)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "from-guest")); err != nil || string(b) != "guest\n" {
		t.Fatalf("host sees %q %v", b, err)
	}
	out, err := sb.Shell(context.Background(), "echo x > /ro/g")
	if err != nil || out.Success() || !strings.Contains(out.Stderr(), "Read-only") {
		t.Fatalf("write to a read-only bind: %v %d %q", err, out.ExitCode(), out.Stderr())
	}
	if _, err := os.Stat(filepath.Join(ro, "g")); err == nil {
		t.Fatal("the read-only bind was written")
	}
}

func TestSandboxNamedMounts(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	existing := newVolume(t, "named")
	if err := existing.FS().WriteString("seed", "from the host\n"); err != nil {
		t.Fatal(err)
	}
	created := uniqueName("created")
	disk := uniqueName("diskvol")
	t.Cleanup(func() {
		_ = RemoveVolume(ctx, created)
		_ = RemoveVolume(ctx, disk)
	})
	sb := newSandbox(t, "named", WithMounts(map[string]MountConfig{
		"/existing": Mount.Named(existing.Name(), MountOptions{}),
		"/created":  Mount.NamedWith(created, MountOptions{}, NamedVolumeOptions{Mode: "create"}),
		"/disk":     Mount.NamedWith(disk, MountOptions{}, NamedVolumeOptions{Mode: "ensure-exists", Kind: "disk", SizeMiB: 64}),
	}))
	s := shell(t, sb, "cat /existing/seed && echo a > /existing/a && echo b > /created/b && echo c > /disk/c && cat /disk/c")
	if s != "from the host\nc\n" {
		t.Fatalf("%q", s)
	}
	if got, err := existing.FS().ReadString("a"); err != nil || got != "a\n" {
		t.Fatalf("%q %v", got, err)
	}
	h, err := GetVolume(ctx, created)
	if err != nil || h.Kind() != VolumeKindDir {
		t.Fatalf("created volume: %v", err)
	}
	if got, err := h.FS().ReadString("b"); err != nil || got != "b\n" {
		t.Fatalf("%q %v", got, err)
	}
	d, err := GetVolume(ctx, disk)
	if err != nil || d.Kind() != VolumeKindDisk || *d.CapacityBytes() != 64<<20 {
		t.Fatalf("disk volume: %v", err)
	}
	// Written through the attached disk is refused while the sandbox runs.
	wantKind(t, d.FS().WriteString("x", "x"), ErrVolumeInUse)
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := d.FS().ReadString("c"); err != nil || got != "c\n" {
		t.Fatalf("disk after stop %q %v", got, err)
	}
	// A create mount of a volume that exists fails, and creates nothing.
	_, err = CreateSandbox(ctx, uniqueName("dup"), WithMounts(map[string]MountConfig{
		"/c": Mount.NamedWith(created, MountOptions{}, NamedVolumeOptions{Mode: "create"}),
	}))
	wantKind(t, err, ErrVolumeAlreadyExists)
	// A missing volume with the default mode is not created.
	missing := uniqueName("missing")
	_, err = CreateSandbox(ctx, uniqueName("miss"), WithMounts(map[string]MountConfig{
		"/m": Mount.Named(missing, MountOptions{}),
	}))
	wantKind(t, err, ErrVolumeNotFound)
	// An ensure-exists mount that does not match the volume is refused.
	_, err = CreateSandbox(ctx, uniqueName("incompat"), WithMounts(map[string]MountConfig{
		"/d": Mount.NamedWith(created, MountOptions{}, NamedVolumeOptions{Mode: "ensure-exists", Kind: "disk", SizeMiB: 64}),
	}))
	wantKind(t, err, ErrIncompatibleVolume)
}

func TestSandboxTmpfsAndDiskImage(t *testing.T) {
	needRoot(t)
	img := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Skipf("skipped: mkfs.ext4 failed (e2fsprogs missing?): %v %s", err, out)
	}
	ctx := context.Background()
	sb := newSandbox(t, "tmpdisk", WithMounts(map[string]MountConfig{
		"/scratch": Mount.Tmpfs(TmpfsOptions{SizeMiB: 8}),
		"/img":     Mount.Disk(img, DiskOptions{}),
		"/imgro":   Mount.Tmpfs(TmpfsOptions{Readonly: true}),
	}))
	s := shell(t, sb, "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo t > /scratch/t && cat /scratch/t; "+
		"echo persisted > /img/file && grep ' /img ' /proc/mounts | cut -d' ' -f3")
	if s != "tmpfs\nt\next4\n" {
		t.Fatalf("%q", s)
	}
	// The tmpfs size limit holds.
	out, err := sb.Shell(ctx, "dd if=/dev/zero of=/scratch/big bs=1M count=16 2>&1")
	if err != nil || out.Success() {
		t.Fatalf("16 MiB into an 8 MiB tmpfs: %v %q", err, out.Stdout())
	}
	out, err = sb.Shell(ctx, "touch /imgro/x")
	if err != nil || out.Success() {
		t.Fatalf("write to a read-only tmpfs: %v", err)
	}
	// The image keeps what was written; the tmpfs does not.
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := StartSandbox(ctx, sb.Name())
	if err != nil {
		t.Fatal(err)
	}
	if s := shell(t, again, "cat /img/file; ls /scratch | wc -l"); s != "persisted\n0\n" {
		t.Fatalf("after restart %q", s)
	}
}

func TestExecHonoursContext(t *testing.T) {
	needRoot(t)
	sb := newSandbox(t, "cancel")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := sb.Exec(ctx, "sleep", []string{"60"})
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Exec returned after %v", took)
	}
	wantKind(t, err, ErrCancelled)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("not DeadlineExceeded: %v", err)
	}
	// The command was killed, not left running.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := shell(t, sb, "cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$' || true")
		if s == "0\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep still runs: %q", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSandboxBindRootfs(t *testing.T) {
	needRoot(t)
	// "/" shares the host's root, read-only.
	sb := newSandbox(t, "rootfs", WithBindRootfs("/"), WithEnv(map[string]string{"A": "1"}),
		WithEnv(map[string]string{"B": "2"}), WithWorkdir("/tmp"))
	if s := shell(t, sb, "test -x /usr/bin/env && echo $A$B && pwd"); s != "12\n/tmp\n" {
		t.Fatalf("%q", s)
	}
	marker := filepath.Join("/var/tmp", uniqueName("rootfs-marker"))
	out, err := sb.Shell(context.Background(), "echo x > "+marker)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		os.Remove(marker)
		t.Fatalf("the sandbox wrote the host's root (exit %d)", out.ExitCode())
	}
}

func TestExecBinaryOutputAndConcurrency(t *testing.T) {
	needRoot(t)
	sb := newSandbox(t, "conc")
	out, err := sb.Exec(context.Background(), "printf", []string{`\377\000\001`})
	if err != nil {
		t.Fatal(err)
	}
	if b := out.StdoutBytes(); len(b) != 3 || b[0] != 0xff || b[1] != 0 || b[2] != 1 {
		t.Fatalf("stdout bytes %v", b)
	}
	// Commands from many goroutines at once, each with its own output.
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func(i int) {
			out, err := sb.Shell(context.Background(), fmt.Sprintf("sleep 0.2; echo %d", i))
			if err == nil && out.Stdout() != fmt.Sprintf("%d\n", i) {
				err = fmt.Errorf("command %d printed %q", i, out.Stdout())
			}
			errs <- err
		}(i)
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestSandboxOnTheVMBackend(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipped: qemu-system-x86_64 is not installed (scripts/setup installs it)")
	}
	if os.Getenv("MSB_VM_ASSETS") == "" {
		// One guest kernel cache for the whole run, outside the scratch home.
		t.Setenv("MSB_VM_ASSETS", filepath.Join(os.TempDir(), "msb-go-vm-assets"))
	}
	ctx := context.Background()
	vol := uniqueName("vmvol")
	t.Cleanup(func() { _ = RemoveVolume(ctx, vol) })
	sb := newSandbox(t, "vm",
		WithBackend(BackendVM),
		WithMounts(map[string]MountConfig{
			"/data": Mount.NamedWith(vol, MountOptions{}, NamedVolumeOptions{Mode: "ensure-exists", QuotaMiB: 4}),
		}))
	host, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(shell(t, sb, "uname -r")); got == strings.TrimSpace(string(host)) {
		t.Fatalf("the sandbox runs the host's kernel %q, not a VM's", got)
	}
	shell(t, sb, "echo from-the-vm > /data/greeting")
	h, err := GetVolume(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	data, err := h.FS().ReadString("greeting")
	if err != nil || data != "from-the-vm\n" {
		t.Fatalf("volume file = %q, %v", data, err)
	}
	out, err := sb.Shell(ctx, "dd if=/dev/zero of=/data/big bs=1M count=8")
	if err != nil {
		t.Fatal(err)
	}
	if out.Success() || !strings.Contains(out.Stderr(), "No space left") {
		t.Fatalf("the quota did not hold: exit %d, %q", out.ExitCode(), out.Stderr())
	}
	if _, err := CreateSandbox(ctx, uniqueName("bad"), WithBackend("kvm")); !IsKind(err, ErrInvalidArgument) {
		t.Fatalf("an unknown backend: %v", err)
	}
}
