package e2e

import (
	"context"
	"slices"
	"testing"

	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// replacedForms are the manifest flavours the replaced-entries image is
// pushed in: eStargz layers under OCI and under Docker v2s2 media types.
var replacedForms = []struct {
	name string
	opts []fixture.Option
}{
	{"oci", nil},
	{"docker", []fixture.Option{fixture.WithDockerMediaTypes()}},
}

// TestMountReplacedEntries mounts fixture.Replaced, whose middle layer
// replaces entries of every pair of types by a whiteout and a new entry
// of the same name, in both orders, with hardlinks and implicit parents,
// and compares the tree entry by entry with umoci's unpack of the image.
func TestMountReplacedEntries(t *testing.T) {
	requireRoot(t)
	layers, undefined := fixture.Replaced()
	d := startDaemon(t, nil)
	for _, form := range replacedForms {
		t.Run(form.name, func(t *testing.T) {
			ref := push(t, shared.reg, "replaced", form.name, layers, fixture.FormEStargz, form.opts...)
			dir, m := d.mount(t, ref)
			if len(m.Layers) != len(layers) {
				t.Fatalf("mounted %d layers, want %d", len(m.Layers), len(layers))
			}
			got, err := treecmp.Walk(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := referenceTree(t, ref)
			diffs := treecmp.Diff(undefinedMTimes(wholeSeconds(want), undefined), undefinedMTimes(got, undefined),
				treecmp.SkipPaths(estargzBookkeeping))
			for _, diff := range diffs {
				t.Errorf("mount differs from umoci's full unpack: %s", diff)
			}
			if n := countUnder(want, fixture.ReplacedRoot); n < 150 {
				t.Errorf("umoci's unpack has %d entries under %s; the fixture lost its cases?", n, fixture.ReplacedRoot)
			}
		})
	}
}

// referenceTree is umoci's full unpack of ref, walked.
func referenceTree(t *testing.T, ref string) []treecmp.Record {
	t.Helper()
	rootfs := t.TempDir()
	if err := treecmp.ReferenceUnpack(context.Background(), t, ref, rootfs); err != nil {
		t.Fatal(err)
	}
	recs, err := treecmp.Walk(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// undefinedMTimes zeroes the mtimes of the directories no layer header
// describes: umoci gives them the time of the unpack, Strata zero.
func undefinedMTimes(recs []treecmp.Record, undefined []string) []treecmp.Record {
	out := slices.Clone(recs)
	for i := range out {
		if slices.Contains(undefined, out[i].Path) {
			out[i].MTime = 0
		}
	}
	return out
}

func countUnder(recs []treecmp.Record, dir string) int {
	n := 0
	for _, r := range recs {
		if len(r.Path) > len(dir) && r.Path[:len(dir)+1] == dir+"/" {
			n++
		}
	}
	return n
}
