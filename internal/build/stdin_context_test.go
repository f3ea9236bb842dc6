package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStdinContext: what `strata build -` reads is a Dockerfile, or a
// context archive in any compression ADD knows, unpacked inside its
// directory only.
func TestStdinContext(t *testing.T) {
	ctx := context.Background()
	df := "FROM scratch\nCOPY a.txt /\n"
	archive := makeTestTar(t, tarEntry{name: "Dockerfile", body: df}, tarEntry{name: "sub/", typ: tar.TypeDir}, tarEntry{name: "sub/a.txt", body: "a\n"})
	for _, tt := range []struct {
		name string
		in   []byte
	}{
		{"tar", archive},
		{"gzip", gzipTestBytes(t, archive)},
		{"zstd", zstdTestBytes(t, archive)},
		{"bzip2", decodeFixture(t, helloTarBzip2)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			got, isArchive, err := StdinContext(ctx, bytes.NewReader(tt.in), dir, 1<<20)
			if err != nil || !isArchive || got != nil {
				t.Fatalf("StdinContext = %q, %v, %v; want an archive", got, isArchive, err)
			}
			if tt.name == "bzip2" {
				wantFile(t, filepath.Join(dir, "hello.txt"), "hi\n", 0o640)
				return
			}
			wantFile(t, filepath.Join(dir, "Dockerfile"), df, 0o644)
			wantFile(t, filepath.Join(dir, "sub/a.txt"), "a\n", 0o644)
		})
	}
	t.Run("dockerfile", func(t *testing.T) {
		dir := t.TempDir()
		// Longer than what is looked at to tell an archive.
		long := df + strings.Repeat("# a comment line\n", 2*stdinPeek/17)
		got, isArchive, err := StdinContext(ctx, strings.NewReader(long), dir, 1<<20)
		if err != nil || isArchive || string(got) != long {
			t.Fatalf("StdinContext = %d bytes, %v, %v; want the Dockerfile's %d", len(got), isArchive, err, len(long))
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("the context of a Dockerfile holds %v, want nothing", entries)
		}
	})
	t.Run("empty", func(t *testing.T) {
		got, isArchive, err := StdinContext(ctx, strings.NewReader(""), t.TempDir(), 1<<20)
		if err != nil || isArchive || len(got) != 0 {
			t.Fatalf("StdinContext of nothing = %q, %v, %v; want an empty Dockerfile", got, isArchive, err)
		}
	})
	t.Run("dockerfile too big", func(t *testing.T) {
		_, _, err := StdinContext(ctx, strings.NewReader(strings.Repeat("x", 2000)), t.TempDir(), 1000)
		if err == nil || !strings.Contains(err.Error(), "over 1000 bytes") {
			t.Errorf("err = %v, want the Dockerfile refused for its size", err)
		}
	})
	t.Run("climbing out", func(t *testing.T) {
		outer := t.TempDir()
		dir := mkdirTest(t, outer, "ctx", 0o755)
		evil := makeTestTar(t, tarEntry{name: "Dockerfile", body: df}, tarEntry{name: "../escaped"})
		// Kept inside, as the context were the root (docker's chroot).
		if _, _, err := StdinContext(ctx, bytes.NewReader(evil), dir, 1<<20); err != nil {
			t.Fatal(err)
		}
		wantMissing(t, filepath.Join(outer, "escaped"))
		if _, err := os.Stat(filepath.Join(dir, "escaped")); err != nil {
			t.Errorf("the entry is not kept inside the context: %v", err)
		}
	})
	t.Run("corrupt archive", func(t *testing.T) {
		gz := gzipTestBytes(t, archive)
		_, _, err := StdinContext(ctx, bytes.NewReader(gz[:len(gz)-40]), t.TempDir(), 1<<20)
		if err == nil || !strings.Contains(err.Error(), "unpacking the context from standard input") {
			t.Errorf("err = %v, want the truncated archive refused", err)
		}
	})
}

// FuzzStdinContext: whatever standard input holds, it is either the
// Dockerfile, byte for byte, or a context unpacked inside its directory.
func FuzzStdinContext(f *testing.F) {
	f.Add([]byte("FROM scratch\nRUN true\n"))
	for _, script := range unpackSeeds {
		f.Add(tarFromScript(f, script))
	}
	f.Add(gzipTestBytes(f, tarFromScript(f, unpackSeeds[1])))
	f.Fuzz(func(t *testing.T, data []byte) {
		if declaresMoreThan(data, 1<<20) {
			t.Skip("the archive declares more than 1 MiB: unpacking it tests the disk, not the paths")
		}
		outer := t.TempDir()
		dir := mkdirTest(t, outer, "ctx", 0o755)
		df, isArchive, err := StdinContext(context.Background(), bytes.NewReader(data), dir, 1<<20)
		if err == nil && !isArchive && !bytes.Equal(df, data) {
			t.Fatalf("the Dockerfile read is %d bytes, want the input's %d", len(df), len(data))
		}
		if entries, _ := os.ReadDir(outer); len(entries) != 1 {
			t.Fatalf("%s holds %v, want only the context", outer, entries)
		}
	})
}

// TestStdinContextDirSweep: a context directory whose build was killed
// (nobody holds it) is removed by the next build's; one a running build
// holds is not; each build removes its own when done.
func TestStdinContextDirSweep(t *testing.T) {
	tmp := t.TempDir()
	dead := filepath.Join(tmp, stdinContextPrefix+"killed")
	must(t, os.MkdirAll(filepath.Join(dead, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(dead, "sub", "f"), []byte("left"), 0o644))
	other := filepath.Join(tmp, "unrelated")
	must(t, os.Mkdir(other, 0o755))
	running, doneRunning, err := StdinContextDir(tmp)
	must(t, err)
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed build's context is still there: %v", err)
	}
	next, doneNext, err := StdinContextDir(tmp)
	must(t, err)
	for _, d := range []string{running, next, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	doneRunning()
	doneNext()
	entries, _ := os.ReadDir(tmp)
	if len(entries) != 1 || entries[0].Name() != "unrelated" {
		t.Errorf("%s holds %v, want only unrelated", tmp, entries)
	}
}
