package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/store"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts FUSE for real: run as root")
	}
}

// mountedLayer is a built layer served by FUSE from a store at root.
type mountedLayer struct {
	root    string
	dir     string
	st      *store.Store
	content *Content
	mount   *LayerMount
	whole   chan wholeResult // every whole-file job that ends
	once    sync.Once
}

type wholeResult struct {
	job wholeJob
	err error
}

// mountTestLayer opens the store at root and mounts bl from it with whole
// files on. setup, when set, runs on the Content before the mount (to set
// test hooks). The mount is undone at cleanup, or by close.
func mountTestLayer(t *testing.T, root string, bl *builtLayer, setup func(*Content)) *mountedLayer {
	t.Helper()
	return mountTestLayerCfg(t, root, bl, setup, nil)
}

// mountTestLayerCfg is mountTestLayer with the mount's config from cfg,
// given the mount directory (nil: none).
func mountTestLayerCfg(t *testing.T, root string, bl *builtLayer, setup func(*Content), cfg func(dir string) MountConfig) *mountedLayer {
	t.Helper()
	st, err := store.Open(root, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ml := &mountedLayer{root: root, dir: t.TempDir(), st: st, whole: make(chan wholeResult, 64)}
	view := index.NewMemory(bl.idx, int64(len(bl.blob)))
	ml.content = NewContent("sha256:test", view, &memBlob{data: bl.blob}, st.Chunks, WithWholeFiles(st.Files))
	ml.content.whole.onWholeDone = func(job wholeJob, err error) {
		select {
		case ml.whole <- wholeResult{job, err}:
		default:
		}
	}
	if setup != nil {
		setup(ml.content)
	}
	var mc MountConfig
	if cfg != nil {
		mc = cfg(ml.dir)
	}
	ml.mount, err = MountLayer(ml.dir, view, ml.content, mc)
	if err != nil {
		ml.content.Close()
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { ml.close(t) })
	return ml
}

// close unmounts, stops background work, closes the store: a daemon
// that stops.
func (ml *mountedLayer) close(t *testing.T) {
	ml.once.Do(func() {
		if err := ml.mount.Unmount(); err != nil {
			t.Error(err)
		}
		ml.content.Close()
		ml.st.Close()
	})
}

func (ml *mountedLayer) requirePassthrough(t *testing.T) {
	t.Helper()
	if !ml.mount.Passthrough() {
		t.Skip("FUSE passthrough unavailable on this kernel or cache filesystem (see the log)")
	}
}

// waitWhole waits, boundedly, for the next whole-file job op to end.
func (ml *mountedLayer) waitWhole(t *testing.T, op string) error {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case r := <-ml.whole:
			if r.job.op == op {
				return r.err
			}
		case <-deadline:
			t.Fatalf("no %s of a whole file ended within 30s", op)
		}
	}
}

// waitReleased waits, boundedly, until the daemon has seen every open of
// name released: the kernel sends releases after close returns, and an
// open the daemon still counts keeps the file out of passthrough mode.
func (ml *mountedLayer) waitReleased(t *testing.T, name string) {
	t.Helper()
	e, found, err := ml.content.idx.Lookup(index.RootIno, name)
	if err != nil || !found {
		t.Fatalf("%s: not in the index: %v", name, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		open := ml.mount.lfs.modes.openCount(e.Ino)
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d opens not released within 10s", name, open)
		}
	}
}

// readThrough reads name through the mount and checks its bytes. With
// dropPages, the file's pages in the FUSE mount's page cache are dropped
// before it is closed, so that the next read of it cannot be served from
// there.
func readThrough(t *testing.T, dir, name string, want []byte, dropPages bool) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(want)+1)
	n, err := f.ReadAt(got, 0)
	if n != len(want) || !bytes.Equal(got[:n], want) {
		t.Fatalf("%s: read %d bytes (%v), want %d identical bytes", name, n, err, len(want))
	}
	if dropPages {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// daemonReads counts the reads the daemon served, from chunks or from a
// whole file.
func daemonReads() float64 {
	return counterValue(metricChunkReads.WithLabelValues("cache")) +
		counterValue(metricChunkReads.WithLabelValues("fetch")) +
		counterValue(metricPassthroughFallbackReads)
}

func wholeFilesIn(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	for _, d := range []string{"files/sha256", "tmp"} {
		ents, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	return out
}

func TestPassthroughAfterAssembly(t *testing.T) {
	requireRoot(t)
	bl := buildEStargz(t, []string{"big", "onechunk"}, []int{5<<20 + 12345, 1<<20 + 100}, 2<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	ml.requirePassthrough(t)

	// First read: through the daemon, which fetches and caches the
	// chunks, and assembles the whole file as they come, before the
	// reader closes the file.
	f, err := os.Open(filepath.Join(ml.dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(bl.files["big"]))
	if n, err := f.ReadAt(got, 0); n != len(got) || !bytes.Equal(got, bl.files["big"]) {
		t.Fatalf("first read: %d bytes, %v, or other bytes", n, err)
	}
	if err := ml.waitWhole(t, "assemble"); err != nil {
		t.Fatalf("assembly: %v", err)
	}
	if got := wholeFilesIn(t, ml.root); len(got) != 1 {
		t.Fatalf("store holds %v, want one whole file and no temporary file", got)
	}
	// Drop the mount's pages of the file, so that a read not done by
	// passthrough would reach the daemon.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ml.waitReleased(t, "big")

	opens, reads := counterValue(metricPassthroughOpens), daemonReads()
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	if got := counterValue(metricPassthroughOpens) - opens; got != 1 {
		t.Fatalf("second open: %v passthrough opens, want 1", got)
	}
	if got := daemonReads() - reads; got != 0 {
		t.Fatalf("second open: the daemon served %v reads, want none", got)
	}

	// A file of one chunk is its chunk file: once the chunk is cached
	// (here by a read that does not open the file, so that no release
	// of a daemon open can race the next open), its opens are passthrough.
	e, _, err := ml.content.idx.Lookup(index.RootIno, "onechunk")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ml.content.ReadAt(context.Background(), e, make([]byte, e.Size), 0); err != nil {
		t.Fatal(err)
	}
	opens, reads = counterValue(metricPassthroughOpens), daemonReads()
	readThrough(t, ml.dir, "onechunk", bl.files["onechunk"], false)
	if counterValue(metricPassthroughOpens)-opens != 1 || daemonReads() != reads {
		t.Fatal("one-chunk file: not read by passthrough from its chunk")
	}

	// Through overlayfs, as Strata serves images: the layer mount stays
	// stackable, and the kernel still reads the whole file directly.
	empty, merged := t.TempDir(), t.TempDir()
	if err := kmount.Overlay(merged, []string{ml.dir, empty}, "", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kmount.Unmount(merged) })
	opens, reads = counterValue(metricPassthroughOpens), daemonReads()
	readThrough(t, merged, "big", bl.files["big"], false)
	if counterValue(metricPassthroughOpens)-opens != 1 || daemonReads() != reads {
		t.Fatal("read through overlayfs: not by passthrough")
	}
}

// TestNewConnectionForgetsADeadOnesModes: the open files' modes a dead
// connection's server saved (a large file open in passthrough, with that
// connection's backing ID) are not this new connection's: a fresh mount of
// the layer at the same directory, after the daemon and the process
// holding the old connection were both killed, opens the file anew (it
// answered every open with the dead backing ID: EIO, for good).
func TestNewConnectionForgetsADeadOnesModes(t *testing.T) {
	requireRoot(t)
	bl := buildEStargz(t, []string{"big"}, []int{5<<20 + 12345}, 2<<20)
	e, _, err := index.NewMemory(bl.idx, int64(len(bl.blob))).Lookup(index.RootIno, "big")
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	ml := mountTestLayerCfg(t, t.TempDir(), bl, nil, func(dir string) MountConfig {
		cfg := MountConfig{StateDir: stateDir}
		for name, data := range map[string]string{
			"modes":   fmt.Sprintf(`{"%d":{"p":1,"b":5}}`, e.Ino),
			"pending": "stale",
		} {
			if err := os.WriteFile(cfg.file(dir, name), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return cfg
	})
	ml.requirePassthrough(t)
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	if err := ml.waitWhole(t, "assemble"); err != nil {
		t.Fatalf("assembly: %v", err)
	}
	ml.waitReleased(t, "big")
	opens := counterValue(metricPassthroughOpens)
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	if counterValue(metricPassthroughOpens)-opens != 1 {
		t.Error("the second open was not passthrough")
	}
}

func TestSmallFileGetsNoWholeFile(t *testing.T) {
	requireRoot(t)
	// 900 KiB in four chunks: several chunks, but one FUSE read.
	bl := buildEStargz(t, []string{"small", "big"}, []int{900 << 10, 3<<20 + 5}, 256<<10)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	ml.requirePassthrough(t)

	opens := counterValue(metricPassthroughOpens)
	for range 3 {
		readThrough(t, ml.dir, "small", bl.files["small"], true)
	}
	if got := counterValue(metricPassthroughOpens) - opens; got != 0 {
		t.Fatalf("small file: %v passthrough opens", got)
	}
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	if err := ml.waitWhole(t, "assemble"); err != nil {
		t.Fatal(err)
	}
	ml.close(t) // waits for any background work left
	if got := wholeFilesIn(t, ml.root); len(got) != 1 {
		t.Fatalf("store holds %v, want the big file's whole file only", got)
	}
}

func TestCorruptWholeFileIsNotUsed(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	bl := buildEStargz(t, []string{"big"}, []int{4<<20 + 1}, 1<<20)
	ml := mountTestLayer(t, root, bl, nil)
	ml.requirePassthrough(t)
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	if err := ml.waitWhole(t, "assemble"); err != nil {
		t.Fatal(err)
	}
	ml.close(t)

	// Flip a byte while the daemon is down.
	whole := wholeFilesIn(t, root)
	if len(whole) != 1 {
		t.Fatalf("store holds %v, want one whole file", whole)
	}
	p := filepath.Join(root, whole[0])
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[3<<20] ^= 0x40
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}

	ml = mountTestLayer(t, root, bl, nil)
	opens := counterValue(metricPassthroughOpens)
	f, err := os.Open(filepath.Join(ml.dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = ml.waitWhole(t, "verify")
	if !errors.Is(err, store.ErrDigestMismatch) || !errdefs.IsNotFound(err) {
		t.Fatalf("verification of the corrupted whole file: %v, want a digest mismatch", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("corrupted whole file not removed: %v", err)
	}
	got := make([]byte, len(bl.files["big"]))
	if n, err := f.ReadAt(got, 0); n != len(got) || !bytes.Equal(got, bl.files["big"]) {
		t.Fatalf("read through the chunks: %d bytes, %v, or other bytes", n, err)
	}
	if counterValue(metricPassthroughOpens) != opens {
		t.Fatal("the unverified whole file was used")
	}
	f.Close()

	// Assembled again, right, from the chunks that reader went through.
	if err := ml.waitWhole(t, "assemble"); err != nil {
		t.Fatal(err)
	}
	ml.waitReleased(t, "big")
	reads := daemonReads()
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	if counterValue(metricPassthroughOpens) != opens+1 || daemonReads() != reads {
		t.Fatal("the reassembled whole file is not read by passthrough")
	}
}

func TestUnmountDuringAssemblyLeavesNothing(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	bl := buildEStargz(t, []string{"big"}, []int{4 << 20}, 1<<20)
	started := make(chan struct{})
	ml := mountTestLayer(t, root, bl, func(c *Content) {
		var once sync.Once
		c.whole.afterPart = func(ctx context.Context) {
			once.Do(func() {
				close(started)
				<-ctx.Done() // hold the assembly half way until unmount
			})
		}
	})
	ml.requirePassthrough(t)
	readThrough(t, ml.dir, "big", bl.files["big"], false)
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("assembly did not start within 30s")
	}
	if got := wholeFilesIn(t, root); len(got) != 1 || filepath.Dir(got[0]) != "tmp" {
		t.Fatalf("half way, the store holds %v, want one temporary file", got)
	}
	ml.close(t)
	if err := ml.waitWhole(t, "assemble"); !errors.Is(err, context.Canceled) {
		t.Fatalf("assembly cut by unmount ended with %v", err)
	}
	if got := wholeFilesIn(t, root); len(got) != 0 {
		t.Fatalf("after unmount the store holds %v, want nothing", got)
	}
}

func TestNoPassthroughOnStackedCache(t *testing.T) {
	requireRoot(t)
	// A cache on overlayfs cannot back passthrough files of a mount that
	// overlayfs must still be able to stack on (MaxStackDepth 1): the
	// layer mounts all the same and is read through the daemon.
	lower, upper, work, over := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	if err := kmount.Overlay(over, []string{lower}, upper, work); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kmount.Unmount(over) })
	bl := buildEStargz(t, []string{"big"}, []int{3 << 20}, 1<<20)
	ml := mountTestLayer(t, filepath.Join(over, "store"), bl, nil)
	if ml.mount.Passthrough() {
		t.Fatal("passthrough enabled with the cache on overlayfs")
	}
	opens := counterValue(metricPassthroughOpens)
	for range 2 {
		reads := daemonReads()
		readThrough(t, ml.dir, "big", bl.files["big"], true)
		if daemonReads() == reads {
			t.Fatal("read not served by the daemon")
		}
	}
	ml.close(t)
	if counterValue(metricPassthroughOpens) != opens {
		t.Fatal("passthrough opens counted without passthrough")
	}
	if got := wholeFilesIn(t, ml.root); len(got) != 0 {
		t.Fatalf("whole files assembled without passthrough: %v", got)
	}
}

func TestPartlyReadFileLeavesNoWholeFile(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	bl := buildEStargz(t, []string{"big"}, []int{4 << 20}, 1<<20)
	ml := mountTestLayer(t, root, bl, func(c *Content) { c.ahead.bytes = 0 })
	ml.requirePassthrough(t)
	f, err := os.Open(filepath.Join(ml.dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	// One chunk read, without the kernel's read-ahead.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// The assembler started by that read gives up when the file is
	// released with chunks missing, and removes its temporary file.
	if err := ml.waitWhole(t, "assemble"); !errdefs.IsNotFound(err) {
		t.Fatalf("assembly of a partly read file ended with %v, want not found", err)
	}
	if got := wholeFilesIn(t, root); len(got) != 0 {
		t.Fatalf("store holds %v, want nothing", got)
	}
}
