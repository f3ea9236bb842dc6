package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// TestMountImplicitDirectories: a layer that holds a directory only as
// the parent of its entries (no entry of its own, as hand-made tars have
// it) leaves the directory as the lower layer's entry made it, as a
// sequential unpack (umoci) does: mode, owner and xattrs, the root's
// included, read-only and writable, in every format. The times of those
// directories are the unpacker's (it changed them), and Strata keeps the
// lower entry's.
func TestMountImplicitDirectories(t *testing.T) {
	requireRoot(t)
	lowerTime := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	layers := []fixture.LayerSpec{
		{
			{Path: ".", Type: fixture.TypeDir, Mode: 0o751, UID: 3, GID: 4, ModTime: lowerTime, Xattrs: map[string]string{"user.root": "r"}},
			{Path: "priv", Type: fixture.TypeDir, Mode: 0o700, UID: 5, GID: 6, ModTime: lowerTime, Xattrs: map[string]string{"user.k": "v"}},
			fixture.Text("priv/a", "a\n"),
			{Path: "priv/deep", Type: fixture.TypeDir, Mode: 0o2750, UID: 7, GID: 8, ModTime: lowerTime},
			fixture.Dir("open"),
			{Path: "elsewhere", Type: fixture.TypeDir, Mode: 0o711, UID: 9, GID: 9, ModTime: lowerTime},
			fixture.Text("elsewhere/gone", "gone\n"),
			fixture.Text("elsewhere/kept", "kept\n"),
			{Path: "op", Type: fixture.TypeDir, Mode: 0o700, UID: 5, GID: 6, ModTime: lowerTime, Xattrs: map[string]string{"user.k": "op"}},
			fixture.Text("op/old", "old\n"),
			{Path: "sg", Type: fixture.TypeDir, Mode: 0o2770, GID: 9, ModTime: lowerTime},
			{Path: "sg/a", Type: fixture.TypeDir, Mode: 0o700, UID: 5, GID: 5, ModTime: lowerTime},
			fixture.Text("sg/a/o", "o\n"),
		},
		{
			fixture.Text("priv/b", "b\n"),                         // priv and the root have no entry here
			fixture.Text("priv/deep/new/c", "c\n"),                // nor priv/deep; priv/deep/new is new
			fixture.Text("open/x", "x\n"),                         // open's entry below is 0755 root: the same
			fixture.Whiteout("elsewhere/gone"),                    // elsewhere: a parent of a whiteout only
			fixture.Opaque("op"), fixture.Text("op/new", "new\n"), // emptied, kept: the lower entry's
			fixture.Whiteout("sg/a"), fixture.Text("sg/a/x", "x\n"), // made anew: mkdir's, under setgid sg
		},
	}
	undefined := []string{".", "priv", "priv/deep", "priv/deep/new", "open", "elsewhere", "op", "sg", "sg/a"}
	for _, form := range []fixture.Form{fixture.FormEStargz, fixture.FormUncompressed, fixture.FormGzip, fixture.FormZstdChunked} {
		t.Run(form.String(), func(t *testing.T) {
			ref := push(t, shared.reg, uniqueRepo("implicit"), "v1", layers, form)
			d := startDaemon(t, nil)
			want := referenceTree(t, ref, form == fixture.FormZstdChunked)
			if form == fixture.FormEStargz || form == fixture.FormZstdChunked {
				want = wholeSeconds(want)
			}
			check := func(dir string) {
				t.Helper()
				got, err := treecmp.Walk(dir)
				if err != nil {
					t.Fatal(err)
				}
				for _, diff := range treecmp.Diff(undefinedMTimes(want, undefined), undefinedMTimes(got, undefined),
					treecmp.SkipPaths(estargzBookkeeping)) {
					t.Errorf("mount differs from umoci's full unpack: %s", diff)
				}
				for _, p := range []string{".", "priv", "priv/deep", "elsewhere"} {
					var st unix.Stat_t
					if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
						t.Fatal(err)
					}
					if got := time.Unix(st.Mtim.Unix()).UTC(); !got.Equal(lowerTime) {
						t.Errorf("%s: mtime %v, want the lower entry's %v", p, got, lowerTime)
					}
				}
			}
			dir, _ := d.mount(t, ref)
			check(dir)

			rw, _ := d.mountRW(t, ref)
			check(rw)
			// The root too, which a writable mount shows from its upper
			// directory.
			var rst unix.Stat_t
			buf := make([]byte, 16)
			n, xerr := unix.Lgetxattr(rw, "user.root", buf)
			if err := unix.Lstat(rw, &rst); err != nil || rst.Mode&0o7777 != 0o751 || rst.Uid != 3 || rst.Gid != 4 || xerr != nil || string(buf[:n]) != "r" {
				t.Errorf("writable root: mode %o, %d:%d, user.root %q (%v); want 0751, 3:4, r", rst.Mode&0o7777, rst.Uid, rst.Gid, buf[:max(n, 0)], xerr)
			}
			// A write below copies the directories up as they show.
			if err := os.WriteFile(filepath.Join(rw, "priv/deep/written"), []byte("w"), 0o644); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(rw, "priv"), &st); err != nil || st.Mode&0o7777 != 0o700 || st.Uid != 5 || st.Gid != 6 {
				t.Errorf("priv after a write below it: mode %o, %d:%d (%v); want 0700, 5:6", st.Mode&0o7777, st.Uid, st.Gid, err)
			}
		})
	}
}

// TestMountImplicitUnderSetgidOneLayer: in an image of one layer too, a
// directory without an entry under a setgid directory is as mkdir makes
// it there (the parent's group and the setgid bit), as umoci unpacks it,
// read-only and writable; a commit on top keeps it so.
func TestMountImplicitUnderSetgidOneLayer(t *testing.T) {
	requireRoot(t)
	lowerTime := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	layers := []fixture.LayerSpec{{
		{Path: "sg", Type: fixture.TypeDir, Mode: 0o2775, GID: 50, ModTime: lowerTime},
		fixture.Text("sg/n/m/f", "f\n"), // sg/n and sg/n/m have no entry
		fixture.Text("plain/x", "x\n"),  // nor plain, under a root that is not setgid
	}}
	undefined := []string{".", "sg", "sg/n", "sg/n/m", "plain"} // times an unpack changes
	ref := push(t, shared.reg, uniqueRepo("implicit-sgid"), "v1", layers, fixture.FormGzip)
	d := startDaemon(t, nil)
	want := undefinedMTimes(referenceTree(t, ref, false), undefined)
	check := func(what, dir string) {
		t.Helper()
		got, err := treecmp.Walk(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, diff := range treecmp.Diff(want, undefinedMTimes(got, undefined), treecmp.SkipPaths(estargzBookkeeping)) {
			t.Errorf("%s differs from umoci's full unpack: %s", what, diff)
		}
	}
	dir, _ := d.mount(t, ref)
	check("the mount", dir)
	rw, _ := d.mountRW(t, ref)
	check("the writable mount", rw)
	if err := os.WriteFile(filepath.Join(rw, "sg/n/new"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(rw, "sg/n"), &st); err != nil || st.Mode&0o7777 != 0o2755 || st.Gid != 50 {
		t.Errorf("sg/n after a write below it: mode %o, gid %d (%v); want 02755, 50", st.Mode&0o7777, st.Gid, err)
	}
}
