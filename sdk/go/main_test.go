package microsandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestMain runs every test, example and benchmark against a scratch home,
// with the msb binary that build-native.sh put next to the library as the
// sandbox helper (unless MSB_BIN is set).
func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "msb-go-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("MSB_HOME", home)
	if os.Getenv("MSB_BIN") == "" {
		if bin, err := filepath.Abs("native/msb"); err == nil {
			if _, err := os.Stat(bin); err == nil {
				os.Setenv("MSB_BIN", bin)
			}
		}
	}
	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}

var nameCounter atomic.Int64

// uniqueName is a fresh volume or sandbox name.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), nameCounter.Add(1))
}

// newVolume creates a volume removed when the test ends.
func newVolume(t *testing.T, prefix string, opts ...VolumeOption) *Volume {
	t.Helper()
	v, err := CreateVolume(context.Background(), uniqueName(prefix), opts...)
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	t.Cleanup(func() { _ = RemoveVolume(context.Background(), v.Name()) })
	return v
}

// wantKind fails the test unless err is of kind k, both ways of asking.
func wantKind(t *testing.T, err error, k ErrorKind) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error of kind %v, got none", k)
	}
	if !IsKind(err, k) {
		t.Fatalf("want kind %v, got %v: %v", k, kindOf(err), err)
	}
	if !errors.Is(err, k) {
		t.Fatalf("errors.Is(%v, %v) is false", err, k)
	}
}

func kindOf(err error) ErrorKind {
	if e, ok := err.(*Error); ok {
		return e.Kind
	}
	return ErrUnknown
}

func isRoot() bool { return os.Geteuid() == 0 }

// needRoot skips, with the reason, where sandboxes cannot run.
func needRoot(t *testing.T) {
	t.Helper()
	if !isRoot() {
		t.Skip("skipped: running sandboxes with served mounts needs root")
	}
	if os.Getenv("MSB_BIN") == "" {
		t.Skip("skipped: no msb binary; run build-native.sh or set MSB_BIN")
	}
}
