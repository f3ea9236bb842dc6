package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
	"github.com/stratafs/strata/test/treecmp"
)

// multiChunkLayer adds a file over 100 MiB (many chunks) on top of the
// standard layers, in a directory of its own.
func multiChunkLayer() fixture.LayerSpec {
	root := fixture.Dir(".")
	root.ModTime = fixture.DefaultModTime.Add(99 * time.Hour)
	return fixture.LayerSpec{root, fixture.Dir("huge"), fixture.Reg("huge/multi-chunk.bin", 101<<20+12345, 7)}
}

// eStargz bookkeeping entries: real tar entries of every eStargz layer, so
// a full unpack shows them, but not image content; Strata hides them, as
// stargz-snapshotter does.
func estargzBookkeeping(p string) bool {
	return p == "stargz.index.json" || p == ".prefetch.landmark" || p == ".no.prefetch.landmark"
}

// wholeSeconds truncates mtimes to seconds: the eStargz TOC records
// modification times in RFC 3339 without fractions (the estargz writer
// drops them), so no eStargz reader can serve nanoseconds.
func wholeSeconds(recs []treecmp.Record) []treecmp.Record {
	out := make([]treecmp.Record, len(recs))
	for i, r := range recs {
		r.MTime -= r.MTime % int64(time.Second)
		out[i] = r
	}
	return out
}

// TestMountSameTreeAsFullUnpack mounts an image covering every entry type,
// whiteouts and opaque directories across layers, long and non-ASCII
// names, special bits, big ids, xattrs and a multi-chunk file, and checks
// the tree entry by entry against (a) umoci's full unpack of the same
// image and (b) the tree computed from the layer specs alone.
func TestMountSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: append(fixture.Standard(), multiChunkLayer()), form: fixture.FormEStargz,
		tag: "estargz", wholeSeconds: true, unpack: treecmp.ReferenceUnpack,
	})
}

// layerMountType is the filesystem type of a layer's FUSE mount, spelled
// out as users see it in the mount table.
const layerMountType = "fuse.strata"

// TestMountOneLayerSameTreeAsFullUnpack mounts one-layer images: one
// with every entry type and nothing for overlayfs to hide is its layer's
// own mount, bound read-only at the directory; one whose layer has a
// whiteout and an opaque directory (over nothing) goes through overlayfs,
// which hides them. Both trees must be umoci's.
func TestMountOneLayerSameTreeAsFullUnpack(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		checkSameTreeAsFullUnpack(t, treeCase{
			layers: fixture.Standard()[:1], form: fixture.FormEStargz,
			tag: "one-plain", wholeSeconds: true, unpack: treecmp.ReferenceUnpack,
			mountType: layerMountType,
		})
	})
	t.Run("markers", func(t *testing.T) {
		// A whiteout at the top (a merged directory: the empty
		// bottom lower has it too) and an opaque directory.
		root := fixture.Dir(".")
		layer := fixture.LayerSpec{root, fixture.Whiteout("gone"), fixture.Dir("etc"), fixture.Opaque("etc"),
			fixture.Text("etc/hosts", "127.0.0.1 localhost\n"), fixture.Text("kept", "kept\n")}
		checkSameTreeAsFullUnpack(t, treeCase{
			layers: []fixture.LayerSpec{layer}, form: fixture.FormEStargz,
			tag: "one-markers", wholeSeconds: true, unpack: treecmp.ReferenceUnpack,
			mountType: "overlay",
		})
	})
}

// treeCase is an image for checkSameTreeAsFullUnpack: its layers, the form
// they are pushed in, whether the form keeps only whole-second mtimes, and
// how the reference unpacks it.
type treeCase struct {
	layers       []fixture.LayerSpec
	form         fixture.Form
	tag          string
	wholeSeconds bool
	unpack       func(ctx context.Context, t testing.TB, ref, dir string) error
	// indexFirst has another daemon (another machine) run `strata index`
	// on the image first: the mount must then use the pushed indexes.
	indexFirst bool
	// mountType, when set, is the filesystem the image's directory must
	// be: "overlay", or the layer's own mount bound there.
	mountType string
}

// checkSameTreeAsFullUnpack pushes the case's image to a registry of its
// own, mounts it and checks the tree entry by entry against (a) the tree
// computed from the layer specs alone and (b) the reference's full unpack.
func checkSameTreeAsFullUnpack(t *testing.T, c treeCase) {
	t.Helper()
	requireRoot(t)
	reg := registry.Start(t)
	ref := push(t, reg, "standard", c.tag, c.layers, c.form)
	if c.indexFirst {
		indexImage(t, ref)
	}
	d := startDaemon(t, nil)
	mark := logMark()
	dir, m := d.mount(t, ref)
	if len(m.Layers) != len(c.layers) {
		t.Fatalf("mounted %d layers, want %d", len(m.Layers), len(c.layers))
	}
	if c.indexFirst {
		if n := strings.Count(logs.String()[mark:], "layer index imported"); n != len(distinctLayers(m)) {
			t.Errorf("%d layer indexes imported for %d layers", n, len(distinctLayers(m)))
		}
	}
	if c.mountType != "" {
		if got := kmount.FSType(dir); got != c.mountType {
			t.Errorf("image mounted as %q, want %q", got, c.mountType)
		}
	}
	got, err := treecmp.Walk(dir)
	if err != nil {
		t.Fatal(err)
	}
	seconds := func(recs []treecmp.Record) []treecmp.Record {
		if c.wholeSeconds {
			return wholeSeconds(recs)
		}
		return recs
	}
	want, err := treecmp.Expected(c.layers)
	if err != nil {
		t.Fatal(err)
	}
	for _, diff := range treecmp.Diff(seconds(want), got) {
		t.Errorf("mount differs from the layer specs: %s", diff)
	}
	ref0 := t.TempDir()
	if err := c.unpack(context.Background(), t, ref, ref0); err != nil {
		t.Fatal(err)
	}
	unpacked, err := treecmp.Walk(ref0)
	if err != nil {
		t.Fatal(err)
	}
	// umoci drops xattrs with empty values (archive/tar hides them from
	// Header.Xattrs); Strata keeps them, so compare with them dropped.
	for _, diff := range treecmp.Diff(seconds(unpacked), treecmp.DropEmptyXattrs(got), treecmp.SkipPaths(estargzBookkeeping)) {
		t.Errorf("mount differs from umoci's full unpack: %s", diff)
	}
	if t.Failed() {
		t.Logf("%d entries compared", len(got))
	}
}
