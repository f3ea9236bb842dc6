package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// commitBase pushes fixture.Standard in eStargz to the shared registry
// under repo and returns the ref and the reference tree: umoci's full
// unpack of the image with the change script applied, normalized.
func commitBase(t *testing.T, repo string) (string, []treecmp.Record) {
	t.Helper()
	requireRoot(t)
	ref := push(t, shared.reg, repo, "base", fixture.Standard(), fixture.FormEStargz)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := treecmp.ReferenceUnpack(context.Background(), t, ref, rootfs); err != nil {
		t.Fatal(err)
	}
	applyScript(t, rootfs, true)
	return ref, normalized(t, rootfs)
}

// TestCommitSameTreeAsFullUnpack applies every kind of change to a
// writable mount of the every-entry-type image, commits it in every layer
// format, and checks that umoci's unpack of each pushed image equals the
// same changes applied to umoci's unpack of the base, entry by entry; that
// skopeo reads each; that the eStargz and zstd:chunked results mount
// lazily with the same tree; and that an OCI layout written by the commit
// unpacks to the same tree.
func TestCommitSameTreeAsFullUnpack(t *testing.T) {
	base, want := commitBase(t, "commit-tree")
	d := startDaemon(t, nil)
	dir, m := d.mountRW(t, base)
	applyScript(t, dir, true)
	// The mount itself already shows the reference tree.
	linked := []string{"hl/ping-hardlink", fixture.CapsPath}
	reportDiffs(t, "writable mount differs from the reference",
		treecmp.Diff(unlinkedInMount(undefinedRoot(want), linked...), unlinkedInMount(mountView(normalized(t, dir)), linked...),
			treecmp.SkipPaths(estargzBookkeeping)))

	reader := startDaemon(t, nil) // a fresh store: lazy mounts read from the registry
	for _, format := range commitFormats {
		t.Run(formatTag(format), func(t *testing.T) {
			req := daemon.CommitRequest{Dir: dir, Ref: tagged(base, formatTag(format)), Format: format, SourceDateEpoch: epoch()}
			if format == "gzip" {
				req.OCILayout = filepath.Join(t.TempDir(), "layout") + ":v1"
			}
			res, err := d.commit(t, req)
			if err != nil {
				t.Fatalf("commit --format %s: %v", format, err)
			}
			if res.Layer == "" || res.Changes == 0 {
				t.Fatalf("commit made no layer: %+v", res)
			}
			ref := tagged(base, formatTag(format))
			skopeo(t, "inspect", "--tls-verify=false", "docker://"+ref)
			reportDiffs(t, "umoci's unpack of the pushed image differs from the reference",
				treecmp.Diff(want, unpackPushed(t, ref, format), treecmp.SkipPaths(estargzBookkeeping)))

			if req.OCILayout != "" {
				layout := strings.TrimSuffix(req.OCILayout, ":v1")
				skopeo(t, "inspect", "oci:"+req.OCILayout)
				rootfs := filepath.Join(t.TempDir(), "rootfs")
				if err := treecmp.UnpackLayout(context.Background(), layout, "v1", rootfs); err != nil {
					t.Fatal(err)
				}
				reportDiffs(t, "umoci's unpack of the OCI layout differs from the reference",
					treecmp.Diff(want, normalized(t, rootfs), treecmp.SkipPaths(estargzBookkeeping)))
			}

			if format == "estargz" || format == "zstd:chunked" {
				got, mounted := reader.mount(t, res.Ref)
				if len(mounted.Layers) != len(m.Layers)+1 {
					t.Fatalf("the new image mounts %d layers, want %d", len(mounted.Layers), len(m.Layers)+1)
				}
				reportDiffs(t, "lazy mount of the new image differs from the reference",
					treecmp.Diff(undefinedRoot(want), mountView(normalized(t, got)), treecmp.SkipPaths(estargzBookkeeping)))
			}
		})
	}
}

// skopeo runs skopeo (with the policy check off) and returns its output.
func skopeo(t *testing.T, args ...string) string {
	t.Helper()
	if err := treecmp.EnsureInstalled(context.Background()); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("skopeo", append([]string{"--insecure-policy"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo %v: %v\n%s", args, err, out)
	}
	return string(out)
}
