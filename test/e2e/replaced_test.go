package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	tcontainerd "github.com/stratafs/strata/test/containerd"
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
// and compares the tree entry by entry with umoci's unpack of the image:
// in eStargz and in uncompressed tar form, under OCI and Docker media
// types (one tree builder serves both formats).
func TestMountReplacedEntries(t *testing.T) {
	requireRoot(t)
	layers, undefined := fixture.Replaced()
	d := startDaemon(t, nil)
	type mountForm struct {
		name string
		form fixture.Form
		opts []fixture.Option
	}
	var forms []mountForm
	for _, f := range replacedForms {
		forms = append(forms, mountForm{f.name, fixture.FormEStargz, f.opts})
	}
	forms = append(forms, mountForm{"uncompressed", fixture.FormUncompressed, nil},
		mountForm{"docker-uncompressed", fixture.FormUncompressed, []fixture.Option{fixture.WithDockerMediaTypes()}},
		mountForm{"gzip", fixture.FormGzip, nil},
		mountForm{"gzip-indexed", fixture.FormGzip, nil},
		mountForm{"docker-gzip", fixture.FormGzip, []fixture.Option{fixture.WithDockerMediaTypes()}},
		mountForm{"zstd", fixture.FormZstd, nil},
		mountForm{"zstd-chunked", fixture.FormZstdChunked, nil})
	for _, form := range forms {
		t.Run(form.name, func(t *testing.T) {
			ref := push(t, shared.reg, uniqueRepo("replaced"), form.name, layers, form.form, form.opts...)
			md, mark := d, logMark()
			if form.name == "gzip-indexed" {
				// Indexed on another machine, mounted on a fresh one
				// (d indexed these layers itself for "gzip").
				indexImage(t, ref)
				md, mark = startDaemon(t, nil), logMark()
			}
			dir, m := md.mount(t, ref)
			if form.name == "gzip-indexed" && !strings.Contains(logs.String()[mark:], "layer index imported") {
				t.Error("the pushed indexes were not used")
			}
			if len(m.Layers) != len(layers) {
				t.Fatalf("mounted %d layers, want %d", len(m.Layers), len(layers))
			}
			got, err := treecmp.Walk(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := referenceTree(t, ref, form.form == fixture.FormZstd || form.form == fixture.FormZstdChunked)
			if form.form == fixture.FormEStargz || form.form == fixture.FormZstdChunked {
				want = wholeSeconds(want) // an eStargz (or zstd:chunked) TOC keeps whole seconds
			}
			diffs := treecmp.Diff(undefinedMTimes(want, undefined), undefinedMTimes(got, undefined),
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

// referenceTree is umoci's full unpack of ref, walked; umoci reads no
// zstd, so a zstd image is converted to gzip on the way.
func referenceTree(t *testing.T, ref string, zstd bool) []treecmp.Record {
	t.Helper()
	rootfs := t.TempDir()
	unpack := treecmp.ReferenceUnpack
	if zstd {
		unpack = treecmp.ReferenceUnpackGzip
	}
	if err := unpack(context.Background(), t, ref, rootfs); err != nil {
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

// replacedListing lists every entry under fixture.ReplacedRoot with its
// type and mode, owner, device numbers and symlink target, the link count
// of non-directories and the content of files: what a container sees,
// without the mtimes that depend on the unpacker.
const replacedListing = "find " + fixture.ReplacedRoot + " -exec stat -c '%n %f %u:%g %t:%T %N' {} + && " +
	"find " + fixture.ReplacedRoot + " ! -type d -exec stat -c '%n nlink=%h' {} + && " +
	"find " + fixture.ReplacedRoot + " -type f -exec sha256sum {} +"

// TestContainerdReplacedEntries runs fixture.Replaced (on a busybox layer)
// through containerd with Strata as its snapshotter, under OCI and Docker
// media types, and checks that the container sees what busybox sees in
// umoci's unpack of the same image.
func TestContainerdReplacedEntries(t *testing.T) {
	e := startCtdEnv(t)
	busybox := busyboxLayer(t)
	for _, tool := range []string{"find", "stat"} {
		busybox = append(busybox, fixture.Symlink("bin/"+tool, "busybox"))
	}
	cases, _ := fixture.Replaced()
	layers := append([]fixture.LayerSpec{busybox}, cases...)
	for _, form := range replacedForms {
		t.Run(form.name, func(t *testing.T) {
			ref, _ := e.pushImage(t, "replaced-"+form.name, layers, fixture.FormEStargz, form.opts...)
			if out := e.pull(t, ref); !strings.Contains(out, "4 layers, 4 mounted lazily") {
				t.Errorf("pull did not mount every layer lazily:\n%s", out)
			}
			got := sortedLines(e.run(t, ref, "replaced-"+form.name, "cd / && "+replacedListing))
			want := sortedLines(busyboxIn(t, referenceRootfs(t, ref), replacedListing))
			if len(want) < 300 {
				t.Fatalf("the listing of umoci's unpack has %d lines; the fixture lost its cases?", len(want))
			}
			if !slices.Equal(got, want) {
				t.Errorf("the container sees\n%s\nbut busybox in umoci's unpack\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// referenceRootfs is umoci's full unpack of ref.
func referenceRootfs(t *testing.T, ref string) string {
	t.Helper()
	rootfs := t.TempDir()
	if err := treecmp.ReferenceUnpack(context.Background(), t, ref, rootfs); err != nil {
		t.Fatal(err)
	}
	return rootfs
}

// busyboxIn runs script with busybox's sh and tools (the container's) in
// dir and returns its output.
func busyboxIn(t *testing.T, dir, script string) string {
	t.Helper()
	bin := t.TempDir()
	for _, tool := range []string{"sh", "find", "stat", "sha256sum"} {
		if err := os.Symlink(tcontainerd.Busybox, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(bin, "sh"), "-c", script)
	cmd.Dir, cmd.Env = dir, []string{"PATH=" + bin}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("busybox sh -c %q: %v\n%s", script, err, out)
	}
	return string(out)
}

func sortedLines(s string) []string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return lines
}
