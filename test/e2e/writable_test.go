package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// TestWritableMountLeavesLayersAlone changes a writable mount of the
// every-entry-type image in every way and checks that the changes are in
// its upper directory only: a read-only mount of the same image and the
// cached chunks of its layers stay byte for byte as they were.
func TestWritableMountLeavesLayersAlone(t *testing.T) {
	reg := shared.reg
	ref := push(t, reg, "writable", "estargz", fixture.Standard(), fixture.FormEStargz)
	// Writable mounts need no containerd socket.
	d := startDaemon(t, func(c *daemon.Config) { c.ContainerdSocket = daemon.ContainerdSocketOff })
	ro, _ := d.mount(t, ref)
	rw, _ := d.mountRW(t, ref)

	before, err := treecmp.Walk(ro) // reads every file: the cache fills
	if err != nil {
		t.Fatal(err)
	}
	cache := hashTree(t, filepath.Join(d.cfg.Root, "chunks"))
	packs := packPrefixes(t, filepath.Join(d.cfg.Root, "packs"))

	in := func(p string) string { return filepath.Join(rw, p) }
	must(t, os.WriteFile(in("etc/created"), []byte("new\n"), 0o644))
	f, err := os.OpenFile(in("etc/keep.conf"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString("appended\n")
	must(t, err)
	must(t, f.Close())
	must(t, os.Remove(in("etc/hosts")))
	must(t, os.RemoveAll(in(fixture.OpaqueDir)))
	must(t, os.Rename(in(fixture.ExactChunk), in("chunks/renamed")))
	must(t, os.Chmod(in(fixture.SetuidPath), 0o700))
	must(t, os.Lchown(in(fixture.EmptyFile), 4321, 8765))
	must(t, unix.Lsetxattr(in(fixture.OwnedPath), "user.step", []byte("x"), 0))
	must(t, os.Chtimes(in("etc/no-perms"), time.Unix(1, 0), time.Unix(1, 0)))

	// Asked through a symlink to it (a state root or a work directory
	// under one), the daemon finds the mount where the link leads.
	link := filepath.Join(t.TempDir(), "link")
	must(t, os.Symlink(rw, link))
	changes, err := d.client.Changes(context.Background(), link)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.Kind+" "+c.Path)
	}
	for _, want := range []string{"A /etc/created", "C /etc/keep.conf", "D /etc/hosts", "D /" + fixture.OpaqueDir,
		"D /" + fixture.ExactChunk, "A /chunks/renamed", "C /" + fixture.SetuidPath, "C /" + fixture.EmptyFile,
		"C /" + fixture.OwnedPath, "C /etc/no-perms"} {
		if !slices.Contains(got, want) {
			t.Errorf("strata diff lacks %q; it has %q", want, got)
		}
	}

	after, err := treecmp.Walk(ro)
	if err != nil {
		t.Fatal(err)
	}
	if diffs := treecmp.Diff(before, after); len(diffs) > 0 {
		t.Errorf("the read-only mount changed with the writable one:\n%s", strings.Join(diffs, "\n"))
	}
	now := hashTree(t, filepath.Join(d.cfg.Root, "chunks"))
	for p, h := range cache {
		if now[p] != h {
			t.Errorf("cached chunk %s changed", p)
		}
	}
	// Packs of small chunks may have grown (reads cache more chunks), but
	// what they held is as it was.
	for p, before := range packs {
		f, err := os.Open(p)
		must(t, err)
		h := sha256.New()
		_, err = io.CopyN(h, f, before.size)
		f.Close()
		if err != nil || [sha256.Size]byte(h.Sum(nil)) != before.sum {
			t.Errorf("cached chunks of pack %s changed (%v)", p, err)
		}
	}
	if len(cache)+len(packs) == 0 {
		t.Error("nothing cached: the comparison compared nothing")
	}
}

type packPrefix struct {
	size int64
	sum  [sha256.Size]byte
}

// packPrefixes returns the size and sha256 of every pack file under dir.
func packPrefixes(t *testing.T, dir string) map[string]packPrefix {
	t.Helper()
	out := map[string]packPrefix{}
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		must(t, err)
		out[p] = packPrefix{int64(len(b)), sha256.Sum256(b)}
	}
	return out
}

// hashTree returns the sha256 of every regular file under dir.
func hashTree(t *testing.T, dir string) map[string][sha256.Size]byte {
	t.Helper()
	out := map[string][sha256.Size]byte{}
	err := filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRunOnBigBaseMovesLittle runs a command in a writable mount of a
// base with a 200 MiB layer under it: the step must move a small part of
// the base, counted at the registry side.
func TestRunOnBigBaseMovesLittle(t *testing.T) {
	requireRoot(t)
	busybox, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	layers := append(fixture.Big(200), busybox...)
	ref := push(t, shared.reg, "bigstep", "estargz", layers, fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))
	p := startProxy(t, shared.reg)
	d := startDaemon(t, nil)
	dir, m := d.mountRW(t, viaProxy(ref, shared.reg, p))
	var size int64
	for _, l := range m.Layers {
		size += l.Size
	}
	strata := buildStrata(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, strata, "run", "--socket", d.cfg.Socket, dir, "--", "/bin/true")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("strata run: %v\n%s", err, out.String())
	}
	moved := p.Stats().BlobBytes
	t.Logf("base %d bytes; mount and run moved %d blob bytes (%.2f%%)", size, moved, 100*float64(moved)/float64(size))
	if moved*20 >= size {
		t.Errorf("mount + run moved %d bytes of a %d-byte base, want under 5%%", moved, size)
	}
}

// TestCorruptCacheIsFetchedAgain damages every byte range of the chunk
// cache (packs of small chunks and chunk files alike) while no daemon
// runs: the next daemon hashes what it finds before serving it, so the
// image reads back the same tree, its damaged chunks fetched again.
func TestCorruptCacheIsFetchedAgain(t *testing.T) {
	reg := shared.reg
	ref := push(t, reg, "corrupt-cache", "estargz", fixture.Standard(), fixture.FormEStargz)
	root := t.TempDir()
	var before []treecmp.Record
	withDaemon(t, root, func(d *testDaemon) {
		dir := mountFor(t, d, ref)
		var err error
		if before, err = treecmp.Walk(dir); err != nil { // every file read: cached
			t.Fatal(err)
		}
	})
	damaged := 0
	for _, glob := range []string{"packs/*.pack", "chunks/sha256/*"} {
		files, err := filepath.Glob(filepath.Join(root, glob))
		must(t, err)
		for _, p := range files {
			b, err := os.ReadFile(p)
			must(t, err)
			for i := 100; i < len(b); i += 512 {
				b[i] ^= 0x5a
			}
			must(t, os.WriteFile(p, b, 0o600))
			damaged++
		}
	}
	if n, _ := filepath.Glob(filepath.Join(root, "packs/*.pack")); len(n) == 0 {
		t.Fatal("no pack of small chunks in the cache: the test damages nothing it means to")
	}
	mark := logMark()
	withDaemon(t, root, func(d *testDaemon) {
		dir := mountFor(t, d, ref)
		after, err := treecmp.Walk(dir)
		if err != nil {
			t.Fatal(err)
		}
		if diffs := treecmp.Diff(before, after); len(diffs) > 0 {
			t.Errorf("the tree read from a damaged cache differs:\n%s", strings.Join(diffs, "\n"))
		}
	})
	if !strings.Contains(logs.String()[mark:], "corrupt packed chunk forgotten") {
		t.Errorf("no damaged packed chunk was noticed (%d files damaged)", damaged)
	}
}

// mountFor mounts ref with d for as long as d runs (withDaemon): a
// stopping daemon unmounts everything.
func mountFor(t *testing.T, d *testDaemon, ref string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir}); err != nil {
		t.Fatalf("mount %s: %v", ref, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) }) // last resort
	return dir
}

// withDaemon runs a daemon on root for the length of fn, then stops it.
func withDaemon(t *testing.T, root string, fn func(d *testDaemon)) {
	t.Helper()
	requireRoot(t)
	captureLogs(t)
	cfg := daemon.DefaultConfig()
	cfg.Root = root
	sockDir, err := os.MkdirTemp("", "strata-sock-")
	must(t, err)
	defer os.RemoveAll(sockDir)
	cfg.Socket = filepath.Join(sockDir, "s.sock")
	cfg.ContainerdSocket = daemon.ContainerdSocketOff
	defer runDaemon(t, cfg)()
	fn(&testDaemon{cfg: cfg, client: daemon.NewClient(cfg.Socket)})
}

// TestWritableMountNeverMadeIsDropped: a daemon that died while a writable
// mount was being made (its record is written first, its writable layer
// not yet) leaves a record whose restore fails; the next daemon drops it
// and the layers mounted for it, rather than failing it at every start.
func TestWritableMountNeverMadeIsDropped(t *testing.T) {
	ref := push(t, shared.reg, "writable-never-made", "estargz", fixture.Standard(), fixture.FormEStargz)
	root := t.TempDir()
	dir := t.TempDir()
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) }) // last resort
	withDaemon(t, root, func(d *testDaemon) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir, Writable: true}); err != nil {
			t.Fatalf("mount --rw %s: %v", ref, err)
		}
	})
	// The record as such a death leaves it: kept from the first daemon,
	// put back once the mount, writable layer and all, is gone.
	record := func(put []byte) []byte {
		db, err := bolt.Open(filepath.Join(root, "meta.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
		must(t, err)
		defer db.Close()
		var got []byte
		must(t, db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("mounts"))
			if b == nil {
				return errors.New("no mounts bucket")
			}
			if put != nil {
				return b.Put([]byte(dir), put)
			}
			got = bytes.Clone(b.Get([]byte(dir)))
			return nil
		}))
		return got
	}
	rec := record(nil)
	if rec == nil {
		t.Fatal("no record of the writable mount")
	}
	withDaemon(t, root, func(d *testDaemon) {
		must(t, d.client.Unmount(context.Background(), dir, true))
	})
	record(rec)
	for range 2 {
		withDaemon(t, root, func(d *testDaemon) {
			ms, err := d.client.List(context.Background())
			must(t, err)
			if len(ms) != 0 {
				t.Errorf("the mount never made is listed: %+v", ms)
			}
			if n := mountsUnder(t, root); n != 0 {
				t.Errorf("%d mounts under the state root with no image mounted", n)
			}
		})
	}
	if strings.Contains(logs.String(), "could not restore mount") {
		t.Error("a daemon tried to restore the mount never made")
	}
}

// mountsUnder counts the mounts under dir.
func mountsUnder(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	must(t, err)
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			n++
		}
	}
	return n
}

// TestRestoreWaitsForARunFromBeforeTheStop: a stop (SIGTERM) while a
// 'strata run' works in a writable mount leaves that run's container on
// the overlay the stop detached; the next daemon mounts the writable mount
// again only once the run has ended (its lock is free), never a second
// overlay on the upper directory the first one still writes to.
func TestRestoreWaitsForARunFromBeforeTheStop(t *testing.T) {
	ref := push(t, shared.reg, "writable-run-stop", "estargz", fixture.Standard(), fixture.FormEStargz)
	root := t.TempDir()
	dir := t.TempDir()
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) }) // last resort
	var lock *os.File
	var busy *os.File
	withDaemon(t, root, func(d *testDaemon) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir, Writable: true})
		if err != nil {
			t.Fatalf("mount --rw %s: %v", ref, err)
		}
		must(t, os.WriteFile(filepath.Join(dir, "made-by-the-run"), []byte("x\n"), 0o644))
		// What a run holds: its lock, and the overlay, busy.
		lockDir := filepath.Join(root, "run", "locks")
		must(t, os.MkdirAll(lockDir, 0o700))
		lock, err = os.OpenFile(filepath.Join(lockDir, m.Snapshot), os.O_RDONLY|os.O_CREATE, 0o600)
		must(t, err)
		must(t, unix.Flock(int(lock.Fd()), unix.LOCK_EX))
		busy, err = os.Open(filepath.Join(dir, "made-by-the-run"))
		must(t, err)
	})
	defer busy.Close()
	defer lock.Close()
	withDaemon(t, root, func(d *testDaemon) {
		if kmount.FSType(dir) == "overlay" {
			t.Fatal("a second overlay was mounted on the upper directory while the run was on the first")
		}
		_, err := d.client.Changes(context.Background(), dir)
		if err == nil || !strings.Contains(err.Error(), "mounted again once") {
			t.Errorf("strata diff while the run goes on: %v, want it said that the mount waits for the run", err)
		}
		busy.Close()
		lock.Close() // the run ends
		deadline := time.Now().Add(10 * time.Second)
		for kmount.FSType(dir) != "overlay" {
			if time.Now().After(deadline) {
				t.Fatal("the writable mount was not mounted again 10 s after the run ended")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "made-by-the-run")); err != nil || string(b) != "x\n" {
			t.Errorf("the run's file after the mount came back: %q, %v", b, err)
		}
		must(t, d.client.Unmount(context.Background(), dir, true))
	})
}
