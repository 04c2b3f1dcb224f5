package microsandbox

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"
)

// compare runs goOp and the same operation through the Rust API
// (msb_bench_rust, which times a loop of awaited Rust calls in the
// library's runtime) in alternating rounds, and reports the median cost per
// operation of each and the median of the rounds' ratios: on a shared
// machine both sides then see the same load, and a noisy round does not
// decide the result.
func compare(b *testing.B, rust map[string]any, goOp func(i int) error) {
	// Short rounds (10 operations a side) so both sides see the same
	// moments of the machine's load.
	rounds := b.N / 10
	if rounds < 5 {
		rounds = 5
	}
	per := b.N / rounds
	if per == 0 {
		per = 1
	}
	goNs := make([]float64, 0, rounds)
	rustNs := make([]float64, 0, rounds)
	ratios := make([]float64, 0, rounds)
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		start := time.Now()
		for i := 0; i < per; i++ {
			if err := goOp(r*per + i); err != nil {
				b.Fatal(err)
			}
		}
		g := float64(time.Since(start).Nanoseconds()) / float64(per)
		b.StopTimer()
		in := map[string]any{"n": per}
		for k, v := range rust {
			in[k] = v
		}
		if name, ok := in["name"].(string); ok && in["op"] == "create_remove" {
			in["name"] = fmt.Sprintf("%s-r%d-", name, r)
		}
		rs, err := benchRust(in)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		goNs = append(goNs, g)
		rustNs = append(rustNs, rs)
		ratios = append(ratios, g/rs)
	}
	b.StopTimer()
	b.ReportMetric(median(goNs), "go-ns/op")
	b.ReportMetric(median(rustNs), "rust-ns/op")
	b.ReportMetric(median(ratios), "go/rust")
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

func BenchmarkCreateRemoveVolume(b *testing.B) {
	ctx := context.Background()
	prefix := uniqueName("bench-cr")
	compare(b, map[string]any{"op": "create_remove", "name": prefix}, func(i int) error {
		name := fmt.Sprintf("%s-go-%d", prefix, i)
		if _, err := CreateVolume(ctx, name); err != nil {
			return err
		}
		return RemoveVolume(ctx, name)
	})
}

func BenchmarkGetVolume(b *testing.B) {
	ctx := context.Background()
	v, err := CreateVolume(ctx, uniqueName("bench-get"), WithVolumeQuota(64),
		WithVolumeLabels(map[string]string{"team": "ci", "tier": "bench"}))
	if err != nil {
		b.Fatal(err)
	}
	defer v.Remove(ctx)
	for i := 0; i < 10; i++ {
		if err := v.FS().Write(fmt.Sprintf("f%d", i), make([]byte, 4096)); err != nil {
			b.Fatal(err)
		}
	}
	compare(b, map[string]any{"op": "get", "name": v.Name()}, func(int) error {
		_, err := GetVolume(ctx, v.Name())
		return err
	})
}

func BenchmarkListVolumes1000(b *testing.B) {
	ctx := context.Background()
	prefix := uniqueName("bench-ls")
	var names []string
	defer func() {
		for _, n := range names {
			_ = RemoveVolume(ctx, n)
		}
	}()
	existing, err := ListVolumes(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for i := len(existing); i < 1000; i++ {
		n := fmt.Sprintf("%s-%04d", prefix, i)
		if _, err := CreateVolume(ctx, n, WithVolumeLabels(map[string]string{"bench": "list"})); err != nil {
			b.Fatal(err)
		}
		names = append(names, n)
	}
	compare(b, map[string]any{"op": "list"}, func(int) error {
		list, err := ListVolumes(ctx)
		if err == nil && len(list) < 1000 {
			err = fmt.Errorf("listed %d volumes", len(list))
		}
		return err
	})
}

func BenchmarkVolumeFsWriteRead4KiB(b *testing.B) {
	ctx := context.Background()
	v, err := CreateVolume(ctx, uniqueName("bench-fs"))
	if err != nil {
		b.Fatal(err)
	}
	defer v.Remove(ctx)
	fs := v.FS()
	data := make([]byte, 4096)
	for i := range data {
		data[i] = 0x5a
	}
	// Each side rewrites a file of its own.
	compare(b, map[string]any{"op": "fs_write_read", "name": v.Name(), "path": "rust-blob", "size": len(data)}, func(int) error {
		if err := fs.Write("go-blob", data); err != nil {
			return err
		}
		got, err := fs.Read("go-blob")
		if err == nil && len(got) != len(data) {
			err = fmt.Errorf("read %d bytes", len(got))
		}
		return err
	})
}
