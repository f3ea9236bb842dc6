package treecmp

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: unpacking devices, big uids and security.* xattrs")
	}
}

// TestReferenceUnpackStandard pushes Standard (gzip) to the distribution
// registry, unpacks it with skopeo+umoci, and compares the walk with the
// independent expectation. It also pins the facts e2e tests rely on and
// the one known umoci deviation (see unpack.go).
func TestReferenceUnpackStandard(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reg := registry.Start(t)
	img, err := fixture.Build(ctx, fixture.Standard(), fixture.FormGzip, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("standard", "gzip")
	if _, err := fixture.Push(ctx, img, ref); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := ReferenceUnpack(ctx, t, ref, dir); err != nil {
		t.Fatal(err)
	}
	got, err := Walk(dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Expected(fixture.Standard())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range Diff(DropEmptyXattrs(want), got) {
		t.Error(d)
	}
	if diffs := Diff(want, got); len(diffs) != 1 {
		t.Errorf("umoci's known deviation changed (update unpack.go): %q", diffs)
	}
	checkFacts(t, index(got))
}

func index(recs []Record) map[string]Record {
	m := map[string]Record{}
	for _, r := range recs {
		m[r.Path] = r
	}
	return m
}

// checkFacts states the key expectations directly, so they do not depend
// on Expected being right.
func checkFacts(t *testing.T, got map[string]Record) {
	t.Helper()
	for _, gone := range []string{fixture.WhiteFile, fixture.WhiteDir, fixture.WhiteDir + "/a",
		fixture.OpaqueDir + "/lower-only", fixture.OpaqueDir + "/lib", fixture.RecreateDir + "/old", "hl/lone"} {
		if _, ok := got[gone]; ok {
			t.Errorf("%s survived its whiteout/opaque marker", gone)
		}
	}
	for _, present := range []string{fixture.OpaqueDir + "/keep", fixture.OpaqueDir + "/upper-only",
		fixture.OpaqueDir + "/from-top", fixture.RecreateDir + "/new", fixture.LongPath, fixture.EmojiPath, fixture.CJKPath} {
		if _, ok := got[present]; !ok {
			t.Errorf("%s missing", present)
		}
	}
	if g := got["hl/b"].Hardlinks; !slices.Equal(g, []string{"hl/a", "hl/b", "hl/c"}) {
		t.Errorf("hardlink group of hl/b: %v", g)
	}
	caps := got[fixture.CapsPath].Xattrs
	if !slices.ContainsFunc(caps, func(x Xattr) bool { return x.Name == fixture.CapsXattr && len(x.Value) == 20 }) {
		t.Errorf("%s xattrs %q lack a 20-byte %s", fixture.CapsPath, caps, fixture.CapsXattr)
	}
	if m := got[fixture.SetuidPath].Mode; m != 0o4755 {
		t.Errorf("%s mode %o, want 4755", fixture.SetuidPath, m)
	}
	if r := got[fixture.OwnedPath]; r.UID != fixture.BigUID || r.GID != fixture.BigGID {
		t.Errorf("%s owner %d:%d", fixture.OwnedPath, r.UID, r.GID)
	}
	if r := got[fixture.FileToDir]; r.Type != "dir" {
		t.Errorf("%s is %s, want dir", fixture.FileToDir, r.Type)
	}
	if r := got[fixture.DirToFile]; r.Type != "reg" {
		t.Errorf("%s is %s, want reg", fixture.DirToFile, r.Type)
	}
	if r := got["etc"]; r.MTime%1e9 == 0 {
		t.Errorf("etc mtime %d lost its nanoseconds", r.MTime)
	}
}

func TestReferenceUnpackBadRef(t *testing.T) {
	reg := registry.StartInProcess(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := ReferenceUnpack(ctx, t, reg.Ref("no/such", "image"), filepath.Join(t.TempDir(), "rootfs"))
	if !errors.Is(err, ErrUnpack) {
		t.Fatalf("err = %v, want ErrUnpack", err)
	}
}
