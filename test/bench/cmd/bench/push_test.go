package main

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLayerTarHasPrefixDirs checks that a layer stored under a prefix has
// entries for the prefix's directories before its files, as eStargz
// prioritization needs, and keeps the tree's own names under it.
func TestLayerTarHasPrefixDirs(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bin", "go"), []byte("go"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o750); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "layer.tar")
	if err := writeLayerTar(context.Background(), dst, layerSrc{Dir: src, Prefix: "usr/local/go"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var names []string
	modes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		modes[h.Name] = h.Mode
	}
	want := "usr/ usr/local/ usr/local/go/ usr/local/go/bin/ usr/local/go/bin/go"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries %q, want %q", got, want)
	}
	if modes["usr/local/go/"]&0o777 != 0o750 {
		t.Errorf("usr/local/go/ mode %o, want the tree's 750", modes["usr/local/go/"])
	}
}
