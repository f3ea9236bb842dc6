package snapshotter_test

import (
	"context"
	"os"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/stratafs/strata/snapshotter"
)

// requireRoot skips tests that make real overlay and bind mounts.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes real overlayfs and bind mounts")
	}
}

// suiteName tells containerd's suite which overlayfs behaviour to expect.
// Its only effect besides temp-dir names is in the Rename subtest: for
// "overlayfs" it does not rename a directory that comes from a lower layer,
// because overlayfs without redirect_dir answers EXDEV (as for containerd's
// own overlay snapshotter, which Strata's mounts are identical to). Strata
// keeps redirect_dir off on purpose: with it, an upperdir stops being a
// self-contained layer diff. TestLowerDirectoryRenameIsCrossDevice pins the
// behaviour that this name stands for.
const suiteName = "overlayfs"

// TestConformance runs containerd's own snapshotter suite on the local path.
func TestConformance(t *testing.T) {
	requireRoot(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := snapshotter.New(root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}
