package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/lib/x", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"lib":         "usr/lib",       // relative
		"etc/abs":     "/usr/lib/x/f",  // absolute: inside the root, not the host
		"usr/lib/up":  "../../etc/abs", // chained
		"usr/lib/esc": "../../../../../../etc/passwd",
		"loop":        "loop",
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	for in, want := range map[string]string{
		"/lib/x/f":        "usr/lib/x/f",
		"/etc/abs":        "usr/lib/x/f",
		"/usr/lib/up":     "usr/lib/x/f",
		"/usr/lib/esc":    "etc/passwd",
		"/usr/./lib/../x": "usr/x",
	} {
		if got, ok := resolveIn(root, in); !ok || got != want {
			t.Errorf("resolveIn(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if got, ok := resolveIn(root, "/loop"); ok {
		t.Errorf("resolveIn(/loop) = %q, want failure", got)
	}
}
