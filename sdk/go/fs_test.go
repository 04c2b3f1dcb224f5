package microsandbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFsRoundTrip(t *testing.T) {
	fs := newVolume(t, "fs").FS()
	if err := fs.Mkdir("a/b/c"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Mkdir("a/b/c"); err != nil {
		t.Fatalf("Mkdir of an existing tree: %v", err)
	}
	data := []byte{0, 1, 2, 0xff, '\n', 0}
	if err := fs.Write("a/b/c/bin", data); err != nil {
		t.Fatal(err)
	}
	got, err := fs.Read("a/b/c/bin")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %v %v", got, err)
	}
	if err := fs.WriteString("a/hello.txt", "héllo\n"); err != nil {
		t.Fatal(err)
	}
	if s, err := fs.ReadString("a/hello.txt"); err != nil || s != "héllo\n" {
		t.Fatalf("read %q %v", s, err)
	}
	// Truncates.
	if err := fs.WriteString("a/hello.txt", "x"); err != nil {
		t.Fatal(err)
	}
	if s, _ := fs.ReadString("a/hello.txt"); s != "x" {
		t.Fatalf("not truncated: %q", s)
	}
	// Empty files.
	if err := fs.Write("empty", nil); err != nil {
		t.Fatal(err)
	}
	if b, err := fs.Read("empty"); err != nil || len(b) != 0 {
		t.Fatalf("empty: %v %v", b, err)
	}
	// Modes: 0644 files, 0755 directories (less the umask, 022 here).
	st, err := os.Stat(filepath.Join(fs.Root(), "a/hello.txt"))
	if err != nil || st.Mode().Perm()&^0o022 != 0o644&^0o022 {
		t.Fatalf("file mode %v %v", st.Mode(), err)
	}
	st, err = os.Stat(filepath.Join(fs.Root(), "a/b"))
	if err != nil || st.Mode().Perm()&^0o022 != 0o755&^0o022 {
		t.Fatalf("dir mode %v %v", st.Mode(), err)
	}
	for p, want := range map[string]bool{"a": true, "a/b/c/bin": true, "nope": false, "a/nope/x": false} {
		if ok, err := fs.Exists(p); err != nil || ok != want {
			t.Fatalf("Exists(%q) = %v, %v", p, ok, err)
		}
	}

	wantKind(t, fs.Write("missing/f", data), ErrPathNotFound)
	_, err = fs.Read("nope")
	wantKind(t, err, ErrPathNotFound)
	_, err = fs.Read("a")
	wantKind(t, err, ErrIsADirectory)
	wantKind(t, fs.Remove("a"), ErrDirectoryNotEmpty)
	wantKind(t, fs.Write("a/hello.txt/x", data), ErrNotADirectory)
	if err := fs.WriteString("latin1", "\xff\xfe"); err != nil {
		t.Fatal(err)
	}
	_, err = fs.ReadString("latin1")
	wantKind(t, err, ErrNotUTF8)

	if err := fs.Remove("a/hello.txt"); err != nil {
		t.Fatal(err)
	}
	if err := fs.RemoveAll("a"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := fs.Exists("a"); ok {
		t.Fatal("RemoveAll left the tree")
	}
	for _, p := range []string{"", ".", "a/..", "./"} {
		wantKind(t, fs.RemoveAll(p), ErrIsRoot)
		wantKind(t, fs.Remove(p), ErrIsRoot)
	}
}

func TestFsQuota(t *testing.T) {
	fs := newVolume(t, "quota", WithVolumeQuota(1)).FS()
	if err := fs.Write("small", make([]byte, 512<<10)); err != nil {
		t.Fatal(err)
	}
	err := fs.Write("big", make([]byte, 2<<20))
	wantKind(t, err, ErrQuotaExceeded)
	if !strings.Contains(err.Error(), "cannot write big: ") {
		t.Fatalf("message %q", err)
	}
}

// escapeEnv is the Rust suite's attack layout (crates/volfs/tests/attacks.rs)
// planted in a real volume: symlinks out of it in every shape, loops, and a
// directory outside holding a secret.
type escapeEnv struct {
	fs      *VolumeFs
	outside string
}

const secret = "top secret"

func newEscapeEnv(t *testing.T) escapeEnv {
	t.Helper()
	v := newVolume(t, "esc")
	outside := filepath.Join(t.TempDir(), "outside")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(outside, 0o755))
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte(secret), 0o644))
	vol := v.Path()
	must(os.WriteFile(filepath.Join(vol, "inside.txt"), []byte("hello"), 0o644))
	must(os.Mkdir(filepath.Join(vol, "a"), 0o755))
	must(os.Mkdir(filepath.Join(vol, "sub"), 0o755))
	up := strings.Repeat("../", strings.Count(vol, "/"))
	links := map[string]string{
		"toroot":       "/",
		"up":           up,
		"dangling":     filepath.Join(outside, "newfile"),
		"dangling_rel": up + strings.TrimPrefix(outside, "/") + "/newfile",
		"c1":           "c2",
		"c2":           "sub/../c3",
		"c3":           up + strings.TrimPrefix(outside, "/"),
		"l1":           "l2",
		"l2":           "l1",
		"outdir":       outside,
		"procself":     "/proc/self/root" + outside,
	}
	for name, target := range links {
		must(os.Symlink(target, filepath.Join(vol, name)))
	}
	return escapeEnv{fs: v.FS(), outside: outside}
}

// canary is everything outside, with contents.
func (e escapeEnv) canary(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(e.outside)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range entries {
		b, _ := os.ReadFile(filepath.Join(e.outside, d.Name()))
		out[d.Name()] = string(b)
	}
	return out
}

type fsOp struct {
	name    string
	follows bool // follows a final symlink
	run     func(fs *VolumeFs, p string) error
}

var fsOps = []fsOp{
	{"Read", true, func(fs *VolumeFs, p string) error { _, err := fs.Read(p); return err }},
	{"ReadString", true, func(fs *VolumeFs, p string) error { _, err := fs.ReadString(p); return err }},
	{"Write", true, func(fs *VolumeFs, p string) error { return fs.Write(p, []byte("pwned")) }},
	{"WriteString", true, func(fs *VolumeFs, p string) error { return fs.WriteString(p, "pwned") }},
	{"Mkdir", true, func(fs *VolumeFs, p string) error { return fs.Mkdir(p + "/d") }},
	{"Exists", true, func(fs *VolumeFs, p string) error { _, err := fs.Exists(p); return err }},
	{"Remove", false, func(fs *VolumeFs, p string) error { return fs.Remove(p) }},
	{"RemoveAll", false, func(fs *VolumeFs, p string) error { return fs.RemoveAll(p) }},
}

func TestFsEscapes(t *testing.T) {
	probe := newEscapeEnv(t)
	// Paths whose every operation must fail with ErrPathEscape.
	escapes := []string{
		filepath.Join(probe.outside, "secret"),
		"../outside/secret",
		"a/../../outside/secret",
		"..",
		"../",
		"/etc/passwd",
		"toroot" + probe.outside + "/secret",
		"up" + probe.outside + "/secret",
		"c1/secret",
		"outdir/secret",
		"procself/secret",
	}
	for _, op := range fsOps {
		for _, p := range escapes {
			env := newEscapeEnv(t)
			// Each attack gets fresh links (Remove may act on them).
			p = strings.ReplaceAll(p, probe.outside, env.outside)
			before := env.canary(t)
			err := op.run(env.fs, p)
			if !IsKind(err, ErrPathEscape) {
				t.Errorf("%s(%q): want ErrPathEscape, got %v", op.name, p, err)
			}
			if after := env.canary(t); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("%s(%q) changed the outside: %v", op.name, p, after)
			}
		}
	}
}

func TestFsFinalSymlinksLeadingOut(t *testing.T) {
	for _, op := range fsOps {
		for _, p := range []string{"dangling", "dangling_rel", "c1", "outdir", "procself"} {
			env := newEscapeEnv(t)
			before := env.canary(t)
			err := op.run(env.fs, p)
			switch {
			case op.follows && op.name == "Exists":
				// A link leading out is no file of the volume.
				if err != nil && !IsKind(err, ErrPathEscape) {
					t.Errorf("Exists(%q): %v", p, err)
				}
			case op.follows:
				if !IsKind(err, ErrPathEscape) {
					t.Errorf("%s(%q): want ErrPathEscape, got %v", op.name, p, err)
				}
			default:
				// Remove acts on the link itself.
				if err != nil {
					t.Errorf("%s(%q): %v", op.name, p, err)
				}
			}
			if after := env.canary(t); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("%s(%q) changed the outside: %v", op.name, p, after)
			}
			if _, err := os.Stat(filepath.Join(env.outside, "newfile")); err == nil {
				t.Errorf("%s(%q) created a file outside", op.name, p)
			}
		}
	}
}

func TestFsLoopsAndInvalidPaths(t *testing.T) {
	env := newEscapeEnv(t)
	for _, p := range []string{"l1", "l1/x"} {
		_, err := env.fs.Read(p)
		wantKind(t, err, ErrSymlinkLoop)
		wantKind(t, env.fs.Write(p, nil), ErrSymlinkLoop)
	}
	for _, p := range []string{"a\x00b", "a/" + strings.Repeat("x", 256)} {
		_, err := env.fs.Read(p)
		wantKind(t, err, ErrInvalidPath)
		wantKind(t, env.fs.Write(p, nil), ErrInvalidPath)
	}
	if err := env.fs.WriteString(strings.Repeat("x", 255), "ok"); err != nil {
		t.Fatal(err)
	}
	// Lexical rules: ".." inside the volume is fine.
	if s, err := env.fs.ReadString("a/../inside.txt"); err != nil || s != "hello" {
		t.Fatalf("%q %v", s, err)
	}
	_, err := env.fs.Read("a/../../x")
	wantKind(t, err, ErrPathEscape)
	if err.Error() != "path escapes volume root: a/../../x" {
		t.Fatalf("message %q", err)
	}
}

func TestFsHardLinkIsNotWrittenThrough(t *testing.T) {
	env := newEscapeEnv(t)
	secretPath := filepath.Join(env.outside, "secret")
	if err := os.Link(secretPath, filepath.Join(env.fs.Root(), "hl")); err != nil {
		t.Skipf("skipped: cannot hard link across the test directories: %v", err)
	}
	wantKind(t, env.fs.Write("hl", []byte("pwned")), ErrHardLinked)
	if b, _ := os.ReadFile(secretPath); string(b) != secret {
		t.Fatalf("outside file changed: %q", b)
	}
	if err := env.fs.Remove("hl"); err != nil {
		t.Fatal(err)
	}
	if err := env.fs.WriteString("hl", "fresh"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(secretPath); string(b) != secret {
		t.Fatalf("outside file changed: %q", b)
	}
}

func TestFsRootReplacedBySymlink(t *testing.T) {
	v := newVolume(t, "swap")
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	moved := v.Path() + ".moved"
	if err := os.Rename(v.Path(), moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, v.Path()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(v.Path())
		os.Rename(moved, v.Path())
	})
	b, err := v.FS().Read("secret")
	if err == nil {
		t.Fatalf("read through a swapped root: %q", b)
	}
	if err := v.FS().WriteString("planted", "x"); err == nil {
		t.Fatal("wrote through a swapped root")
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
		t.Fatal("file planted outside")
	}
}

func TestFsOfMissingVolume(t *testing.T) {
	fs := (&Volume{name: uniqueName("gone")}).FS()
	_, err := fs.Read("x")
	wantKind(t, err, ErrVolumeNotFound)
}

func TestFsDiskVolumeWorksInsideTheImage(t *testing.T) {
	if !isRoot() {
		t.Skip("skipped: a disk volume's files are reached through a loop device, which needs root")
	}
	v := newVolume(t, "diskfs", WithVolumeKind(VolumeKindDisk), WithVolumeSize(64))
	fs := v.FS()
	if err := fs.Mkdir("d/e"); err != nil {
		t.Fatal(err)
	}
	if err := fs.WriteString("d/e/f", "inside the image"); err != nil {
		t.Fatal(err)
	}
	if s, err := fs.ReadString("d/e/f"); err != nil || s != "inside the image" {
		t.Fatalf("%q %v", s, err)
	}
	// The image is never exposed, and nothing lands in the folder holding it.
	if ok, err := fs.Exists("disk.raw"); err != nil || ok {
		t.Fatalf("disk.raw visible: %v %v", ok, err)
	}
	if _, err := os.Stat(filepath.Join(v.Path(), "d")); err == nil {
		t.Fatal("wrote beside the image instead of inside it")
	}
	_, err := fs.Read("../disk.raw")
	wantKind(t, err, ErrPathEscape)
	// Nothing stays attached: the volume can be removed at once.
	if err := v.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
}
