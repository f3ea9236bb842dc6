package commit

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// baseWithHealth is an image of no layers whose config's health check is
// raw (Docker's JSON, StartInterval and all), or none when raw is "".
func baseWithHealth(t *testing.T, raw string) *Base {
	t.Helper()
	cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["A=1"]`
	if raw != "" {
		cfg += `,"Healthcheck":` + raw
	}
	cfg += `}}`
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(cfg)), Digest: sha([]byte(cfg))}}
	manifest, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	base, err := NewBase(context.Background(), mustRef(t, "127.0.0.1:1/health:v1").Context(), manifest, []byte(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	return base
}

// startIntervalOf reads config.Healthcheck.StartInterval of img's raw
// config, after checking the image is whole: the manifest names the
// config by its digest and size, the digest is the manifest's.
func startIntervalOf(t *testing.T, img v1.Image) time.Duration {
	t.Helper()
	if err := validate.Image(img); err != nil {
		t.Fatalf("the image is not consistent: %v", err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return baseStartInterval(raw)
}

// TestHealthStartInterval: HEALTHCHECK --start-interval, which the config
// model lacks, is written where Docker writes it; a base's is kept while
// its health check is, and goes with it.
func TestHealthStartInterval(t *testing.T) {
	dur := func(d time.Duration) *time.Duration { return &d }
	setInterval := func(c *v1.Config) error { c.Healthcheck.Interval = 7 * time.Second; return nil }
	newCheck := func(c *v1.Config) error {
		c.Healthcheck = &v1.HealthConfig{Test: []string{"CMD", "true"}, Retries: 2}
		return nil
	}
	const withStart = `{"Test":["CMD","true"],"Interval":5000000000,"StartInterval":2000000000}`
	for _, tt := range []struct {
		name  string
		base  string
		edits []func(*v1.Config) error
		set   *time.Duration
		want  time.Duration
	}{
		{"kept from the base", withStart, nil, nil, 2 * time.Second},
		{"kept through other changes", withStart, []func(*v1.Config) error{func(c *v1.Config) error { c.Env = nil; return nil }}, nil, 2 * time.Second},
		{"dropped with the base's check changed", withStart, []func(*v1.Config) error{setInterval}, nil, 0},
		{"set by the commit's HEALTHCHECK", withStart, []func(*v1.Config) error{newCheck}, dur(3 * time.Second), 3 * time.Second},
		{"set on a base without one", "", []func(*v1.Config) error{newCheck}, dur(time.Second), time.Second},
		{"cleared by a HEALTHCHECK without one", withStart, []func(*v1.Config) error{newCheck}, dur(0), 0},
		{"none without a health check", "", nil, dur(time.Second), 0},
		{"none for HEALTHCHECK NONE", withStart, []func(*v1.Config) error{func(c *v1.Config) error {
			c.Healthcheck = &v1.HealthConfig{Test: []string{"NONE"}}
			return nil
		}}, dur(0), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := baseWithHealth(t, tt.base)
			img, err := Build(base, Spec{CreatedBy: "x", Created: time.Unix(0, 0), Edits: tt.edits, HealthStartInterval: tt.set})
			if err != nil {
				t.Fatal(err)
			}
			if got := startIntervalOf(t, img); got != tt.want {
				t.Errorf("start interval %v, want %v", got, tt.want)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if len(cf.History) != 1 || cf.History[0].CreatedBy != "x" {
				t.Errorf("history %+v: the rest of the config is not the commit's", cf.History)
			}
		})
	}
	// The changes of a commit: the last HEALTHCHECK says.
	changes, err := ParseChanges([]string{"HEALTHCHECK --start-interval=4s CMD true", "ENV A=1"})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := HealthStartInterval(changes); !ok || d != 4*time.Second {
		t.Errorf("HealthStartInterval = %v, %v; want 4s", d, ok)
	}
	changes, _ = ParseChanges([]string{"HEALTHCHECK --start-interval=4s CMD true", "HEALTHCHECK NONE"})
	if d, ok := HealthStartInterval(changes); !ok || d != 0 {
		t.Errorf("HealthStartInterval after HEALTHCHECK NONE = %v, %v; want 0", d, ok)
	}
	if _, ok := HealthStartInterval(nil); ok {
		t.Error("no changes said to hold a HEALTHCHECK")
	}
}

// TestBuildManyHistoryEntriesLinear: a Dockerfile's metadata instructions
// become history entries of one commit; what Build allocates for them
// grows with their number, not its square (an image per entry, each with
// its own config, did: a daemon building 5,000 LABELs took 4 GB).
func TestBuildManyHistoryEntriesLinear(t *testing.T) {
	alloc := func(n int) uint64 {
		hist := make([]v1.History, n)
		for i := range hist {
			hist[i] = v1.History{CreatedBy: fmt.Sprintf("LABEL l%d=v", i), EmptyLayer: true}
		}
		base := baseWithHealth(t, "")
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		img, err := Build(base, Spec{CreatedBy: "x", Created: time.Unix(0, 0), History: hist})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := img.RawManifest(); err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil || len(cf.History) != n+1 {
			t.Fatalf("history of %d entries (%v), want %d", len(cf.History), err, n+1)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, big := alloc(500), alloc(4000)
	if big > 16*small {
		t.Errorf("Build allocated %d bytes for 500 history entries and %d for 4000, 8 times as many: more than twice what linear growth gives", small, big)
	}
}
