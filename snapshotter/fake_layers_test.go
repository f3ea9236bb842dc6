package snapshotter_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/snapshotter"
)

// bindLayers stands in for the Strata daemon: it "mounts a layer lazily" by
// bind-mounting, read-only, a directory prepared with the layer's files. The
// lazy FUSE layer itself is tested in fs/; what matters here is that dir
// really shows files afterwards, so overlayfs and removal see a real mount.
type bindLayers struct {
	sources map[string]string // cri.layer-digest -> directory with the files

	mu        sync.Mutex
	notRemote map[string]error // digest -> error Mount returns instead
	litter    map[string]bool  // digest -> write a file into dir, then fail
	mounted   map[string]bool  // dirs this instance mounted
	calls     []string         // "mount dir", "unmount dir", "check dir"
	// beforeMount, when set, runs inside Mount before the bind; tests use
	// it to line up concurrent Prepares.
	beforeMount func()
}

var _ snapshotter.RemoteLayers = (*bindLayers)(nil)

func newBindLayers(sources map[string]string) *bindLayers {
	return &bindLayers{
		sources:   sources,
		notRemote: map[string]error{},
		litter:    map[string]bool{},
		mounted:   map[string]bool{},
	}
}

func (b *bindLayers) record(op, dir string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, op+" "+dir)
}

// count reports how many calls of op were made on dir ("" = any dir).
func (b *bindLayers) count(op, dir string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, c := range b.calls {
		if c == op+" "+dir || (dir == "" && len(c) > len(op) && c[:len(op)+1] == op+" ") {
			n++
		}
	}
	return n
}

func (b *bindLayers) Mount(ctx context.Context, dir string, labels map[string]string) error {
	b.record("mount", dir)
	digest := labels[snapshotter.LabelLayerDigest]
	b.mu.Lock()
	failure, litter, hook := b.notRemote[digest], b.litter[digest], b.beforeMount
	src, ok := b.sources[digest]
	b.mu.Unlock()
	if failure != nil {
		return failure
	}
	if litter {
		if err := os.WriteFile(filepath.Join(dir, "litter"), nil, 0o644); err != nil {
			return err
		}
		return errors.New("half-done mount")
	}
	if !ok {
		return fmt.Errorf("layer %q: %w", digest, snapshotter.ErrNotRemote)
	}
	if hook != nil {
		hook()
	}
	if err := unix.Mount(src, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		_ = unix.Unmount(dir, 0)
		return fmt.Errorf("read-only %s: %w", dir, err)
	}
	b.mu.Lock()
	b.mounted[dir] = true
	b.mu.Unlock()
	return nil
}

// Unmount releases only what this instance mounted, as a restarted daemon
// knows nothing of its predecessor's mounts.
func (b *bindLayers) Unmount(ctx context.Context, dir string) error {
	b.record("unmount", dir)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mounted[dir] {
		return fmt.Errorf("%s: not mounted by this daemon", dir)
	}
	if err := unix.Unmount(dir, 0); err != nil {
		return err
	}
	delete(b.mounted, dir)
	return nil
}

func (b *bindLayers) Check(ctx context.Context, dir string, labels map[string]string) error {
	b.record("check", dir)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mounted[dir] {
		return fmt.Errorf("%s: not served by this daemon", dir)
	}
	return nil
}

// unmountAllUnder detaches every mount below root, deepest first, so that a
// failed test never leaves mounts behind for t.TempDir's removal.
func unmountAllUnder(t *testing.T, root string) {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		t.Errorf("list mounts: %v", err)
		return
	}
	for i := len(infos) - 1; i >= 0; i-- {
		if err := unix.Unmount(infos[i].Mountpoint, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", infos[i].Mountpoint, err)
		}
	}
}

// testRoot makes a temporary directory whose mounts are all undone before
// it is removed.
func testRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	t.Cleanup(func() { unmountAllUnder(t, root) })
	return root
}

// makeLayer writes files (name -> content) into a new directory under base.
func makeLayer(t *testing.T, base, name string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(base, "layers", name)
	for path, content := range files {
		full := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// remoteLabels are the labels containerd's unpacker and CRI put on the
// Prepare of a layer.
func remoteLabels(chainID, digest string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotRef:      chainID,
		snapshotter.LabelLayerDigest:    digest,
		snapshotter.LabelImageRef:       "registry.test/app:1",
		"containerd.io/gc.root":         "test",
		snapshotter.LabelManifestDigest: "sha256:feed",
	})
}

// mountAt mounts ms at a new directory and returns it; it is unmounted at
// the end of the test.
func mountAt(t *testing.T, base string, ms []mount.Mount) string {
	t.Helper()
	target, err := os.MkdirTemp(base, "target-")
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.All(ms, target); err != nil {
		t.Fatalf("mount %+v: %v", ms, err)
	}
	t.Cleanup(func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	return target
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
