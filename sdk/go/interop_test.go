package microsandbox

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// msbCLI runs the msb binary on the test's home.
func msbCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := os.Getenv("MSB_BIN")
	if bin == "" {
		t.Skip("skipped: no msb binary; run build-native.sh or set MSB_BIN")
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

type inspected struct {
	Name     string            `json:"name"`
	Kind     string            `json:"kind"`
	Path     string            `json:"path"`
	QuotaMiB *uint32           `json:"quota_mib"`
	Labels   map[string]string `json:"labels"`
}

func TestInteropGoToCLI(t *testing.T) {
	ctx := context.Background()
	name := uniqueName("go2cli")
	v, err := CreateVolume(ctx, name, WithVolumeQuota(32), WithVolumeLabels(map[string]string{"from": "go"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.FS().WriteString("note", "written from go"); err != nil {
		t.Fatal(err)
	}
	out, err := msbCLI(t, "volume", "inspect", name, "--format", "json")
	if err != nil {
		t.Fatalf("inspect: %v %s", err, out)
	}
	var got []inspected
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(got) != 1 || got[0].Name != name || got[0].Kind != "dir" || got[0].Path != v.Path() ||
		got[0].QuotaMiB == nil || *got[0].QuotaMiB != 32 || got[0].Labels["from"] != "go" {
		t.Fatalf("inspect shows %+v", got)
	}
	if out, err := msbCLI(t, "volume", "fs", name, "cat", "note"); err != nil || out != "written from go" {
		t.Fatalf("volume fs cat: %v %q", err, out)
	}
	if err := RemoveVolume(ctx, name); err != nil {
		t.Fatal(err)
	}
	out, err = msbCLI(t, "volume", "inspect", name)
	if err == nil || !strings.Contains(out, "volume not found: "+name) {
		t.Fatalf("inspect after a Go remove: %v %q", err, out)
	}
}

func TestInteropCLIToGo(t *testing.T) {
	ctx := context.Background()
	name := uniqueName("cli2go")
	t.Cleanup(func() { _ = RemoveVolume(ctx, name) })
	if out, err := msbCLI(t, "volume", "create", name, "--quota", "8", "--label", "from=cli"); err != nil {
		t.Fatalf("create: %v %s", err, out)
	}
	h, err := GetVolume(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if q := h.QuotaMiB(); q == nil || *q != 8 || h.Labels()["from"] != "cli" || h.Kind() != VolumeKindDir {
		t.Fatalf("Go sees quota %v labels %v kind %v", q, h.Labels(), h.Kind())
	}
	list, err := ListVolumes(ctx)
	if err != nil || len(list) == 0 || list[0].Name() != name {
		t.Fatalf("not first in the list: %v", err)
	}
	_, err = CreateVolume(ctx, name)
	wantKind(t, err, ErrVolumeAlreadyExists)
	if out, err := msbCLI(t, "volume", "rm", name); err != nil {
		t.Fatalf("rm: %v %s", err, out)
	}
	_, err = GetVolume(ctx, name)
	wantKind(t, err, ErrVolumeNotFound)
	// And the name is free again from Go.
	v, err := CreateVolume(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Remove(ctx); err != nil {
		t.Fatal(err)
	}
}
