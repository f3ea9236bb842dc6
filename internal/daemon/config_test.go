package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	if cfg, err := LoadConfig(filepath.Join(dir, "absent.toml"), false); err != nil || cfg.Root != DefaultConfig().Root {
		t.Fatalf("missing default config file: %+v, %v", cfg, err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "absent.toml"), true); err == nil {
		t.Fatal("missing explicit config file accepted")
	}
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("root = \"/srv/strata\"\nfetch_timeout = \"5s\"\ninsecure_registries = [\"r:5000\"]\ncontainerd_socket = \"off\"\n"), 0o600)
	cfg, err := LoadConfig(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/srv/strata" || cfg.FetchTimeout.Duration != 5*time.Second || cfg.InsecureRegistries[0] != "r:5000" || cfg.containerdSocket() != "" {
		t.Fatalf("config = %+v", cfg)
	}
	if got := DefaultConfig().containerdSocket(); got != "/run/strata/containerd.sock" {
		t.Fatalf("default containerd socket = %q", got)
	}
	os.WriteFile(p, []byte("prefetch = \"all\"\nprefetch_budget = 1000000\nlayer_indexes = \"off\"\nmemory_limit = 200000000\n"), 0o600)
	if cfg, err := LoadConfig(p, true); err != nil || cfg.Prefetch != "all" || cfg.PrefetchBudget != 1e6 || cfg.LayerIndexes != "off" || cfg.MemoryLimit != 2e8 {
		t.Fatalf("config = %+v, %v", cfg, err)
	}
	if d := DefaultConfig(); d.Prefetch != "auto" || d.LayerIndexes != "auto" || d.MemoryLimit != 0 {
		t.Errorf("defaults %+v", d)
	}
	for _, bad := range []string{"root = \"relative\"", "fetch_timeout = \"-1s\"", "fetch_timeout = \"soon\"", "unknown_key = 1", "cache_size = 0",
		"prefetch = \"sometimes\"", "prefetch_budget = -1", "layer_indexes = \"local\"", "memory_limit = -1",
		"socket = \"relative.sock\"", "insecure_registries = [\"http://host:5000\"]", "insecure_registries = [\"\"]"} {
		os.WriteFile(p, []byte(bad+"\n"), 0o600)
		if _, err := LoadConfig(p, true); err == nil {
			t.Errorf("config %q accepted", bad)
		} else if !strings.Contains(err.Error(), "config") {
			t.Errorf("config %q: error %q does not say it is about the config", bad, err)
		}
	}
}

// TestLoadConfigSaysWhere: a key the daemon does not know is named with
// its line, and a syntax error has its line and column.
func TestLoadConfigSaysWhere(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	for _, tc := range []struct{ text, want string }{
		{"cache_size = 1000000\nfoo = 1\n", "unknown key foo (line 2)"},
		{"\n\nroot =\n", "line 3, column"},
	} {
		os.WriteFile(p, []byte(tc.text), 0o600)
		if _, err := LoadConfig(p, true); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: %v, want it to say %q", tc.text, err, tc.want)
		}
	}
}

// FuzzLoadConfig: a config file of any content is refused or valid.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("root = \"/var/lib/strata\"\nfetch_timeout = \"30s\"\n"))
	f.Add([]byte("cache_size = -5\n[x]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "c.toml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(p, true)
		if err == nil {
			if err := cfg.Validate(); err != nil {
				t.Fatalf("LoadConfig accepted an invalid config: %v", err)
			}
		}
	})
}
