package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// die makes m's server act as a process that was killed: it reads no
// more requests and answers none of those it has in hand.
func die(m *LayerMount) {
	m.conn.mute.Store(true)
	m.conn.dev.SetReadDeadline(time.Now())
	<-m.conn.done
	m.conn.dev.Close()
}

// dieHolding waits until m's server holds a read (its fetch held by
// blob), then kills it (die) and returns what a takeover needs. At
// cleanup, before the layer's content closes, the dead server's handler
// is let go (muted) and waited for.
func dieHolding(t *testing.T, m *LayerMount, blob *memBlob) (*os.File, []byte) {
	t.Helper()
	select {
	case <-blob.held: // the read is in the server's hands
	case <-time.After(10 * time.Second):
		t.Fatal("the read never reached the blob")
	}
	dev, init, err := m.Connection()
	if err != nil {
		t.Fatal(err)
	}
	die(m)
	t.Cleanup(func() {
		close(blob.hold)
		m.conn.handlers.Wait()
	})
	return dev, init
}

// takeoverLayer mounts bl with its fetches held, and returns the mount,
// its store and blob.
func takeoverLayer(t *testing.T, bl *builtLayer, stateDir string) (*LayerMount, *store.Store, *memBlob) {
	t.Helper()
	requireRoot(t)
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blob := &memBlob{data: bl.blob, hold: make(chan struct{}), free: -1, held: make(chan struct{}, 64)}
	view := index.NewMemory(bl.idx, int64(len(bl.blob)))
	content := NewContent("sha256:test", view, blob, st.Chunks)
	t.Cleanup(content.Close)
	dir := t.TempDir()
	m, err := MountLayer(dir, view, content, MountConfig{StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountForCleanup(t, dir) })
	return m, st, blob
}

// unmountForCleanup detaches whatever is left at dir.
func unmountForCleanup(t *testing.T, dir string) {
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
		t.Logf("cleanup: detach %s: %v", dir, err)
	}
}

// resume takes m's connection over in a new server with a blob that
// answers at once, as a restarted daemon would.
func resume(t *testing.T, m *LayerMount, dev *os.File, init []byte, bl *builtLayer, st *store.Store, stateDir string) *LayerMount {
	t.Helper()
	view := index.NewMemory(bl.idx, int64(len(bl.blob)))
	content := NewContent("sha256:test", view, &memBlob{data: bl.blob}, st.Chunks)
	t.Cleanup(content.Close)
	m2, err := ResumeLayer(m.Dir, dev, init, view, content, MountConfig{StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m2.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return m2
}

// TestTakeoverAnswersWhatTheDeadServerHeld: a server dies while a reader
// waits on it (its fetch is held, so the read request is in its hands
// and never answered); a new server takes the live connection over. The
// kernel sends the unanswered read again and the reader gets the right
// bytes; a file opened before the crash reads on through its old handle;
// lookups of names never looked up before, and listings, work.
func TestTakeoverAnswersWhatTheDeadServerHeld(t *testing.T) {
	names := []string{"dir/a", "dir/b", "dir/c", "top"}
	bl := buildEStargz(t, names, []int{300 << 10, 200 << 10, 100 << 10, 50 << 10}, 64<<10)
	stateDir := t.TempDir()
	m, st, blob := takeoverLayer(t, bl, stateDir)
	if m.conn.kernelFlags&capHasResend == 0 {
		t.Skip("kernel without FUSE_NOTIFY_RESEND (Linux < 6.9): see TestTakeoverFailsUnansweredWithoutResend")
	}
	open, err := os.Open(filepath.Join(m.Dir, "dir/b"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(m.Dir, "dir/a"))
		got <- result{b, err}
	}()
	dev, init := dieHolding(t, m, blob)

	m2 := resume(t, m, dev, init, bl, st, stateDir)
	select {
	case r := <-got:
		if r.err != nil || !bytes.Equal(r.b, bl.files["dir/a"]) {
			t.Fatalf("read across the takeover: %d bytes, %v; want the file's %d bytes", len(r.b), r.err, len(bl.files["dir/a"]))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the read held by the dead server was never answered")
	}
	b := make([]byte, len(bl.files["dir/b"]))
	if n, err := open.ReadAt(b, 0); n != len(b) || !bytes.Equal(b, bl.files["dir/b"]) {
		t.Fatalf("read through a handle opened before the takeover: %d bytes, %v", n, err)
	}
	for _, name := range []string{"dir/c", "top"} {
		if b, err := os.ReadFile(filepath.Join(m2.Dir, name)); err != nil || !bytes.Equal(b, bl.files[name]) {
			t.Fatalf("%s after the takeover: %d bytes, %v", name, len(b), err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(m2.Dir, "dir"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, e := range ents {
		listed = append(listed, e.Name())
	}
	if !slices.Equal(listed, []string{"a", "b", "c"}) {
		t.Fatalf("listing after the takeover: %v", listed)
	}
}

// TestTakeoverFailsUnansweredWithoutResend: where the kernel cannot send
// requests again, the one the dead server held fails once with EIO (the
// table of unanswered requests survives the server) rather than hanging.
// The reader sees EIO, or the right bytes when the failed request was the
// kernel's read-ahead and its own read came after; the same read then
// succeeds.
func TestTakeoverFailsUnansweredWithoutResend(t *testing.T) {
	forceNoResend.Store(true)
	defer forceNoResend.Store(false)
	bl := buildEStargz(t, []string{"a", "b"}, []int{300 << 10, 10}, 64<<10)
	stateDir := t.TempDir()
	m, st, blob := takeoverLayer(t, bl, stateDir)
	errc := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(filepath.Join(m.Dir, "a"))
		errc <- err
	}()
	dev, init := dieHolding(t, m, blob)
	m2 := resume(t, m, dev, init, bl, st, stateDir)
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Fatalf("the read the dead server held: %v, want EIO or success", err)
		}
		t.Logf("the reader saw: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the read held by the dead server hangs")
	}
	if m2.failedOnTakeover < 1 {
		t.Fatalf("%d unanswered requests failed on takeover, want the held read", m2.failedOnTakeover)
	}
	if b, err := os.ReadFile(filepath.Join(m2.Dir, "a")); err != nil || !bytes.Equal(b, bl.files["a"]) {
		t.Fatalf("the same read again: %d bytes, %v", len(b), err)
	}
}

// TestSuspendHandsOverWithoutFailing: a suspended mount (a handover)
// answers what it read, the next server takes over, and a reader looping
// over the files throughout sees no error.
func TestSuspendHandsOverWithoutFailing(t *testing.T) {
	names := []string{"a", "b", "c"}
	bl := buildEStargz(t, names, []int{100 << 10, 50 << 10, 10 << 10}, 32<<10)
	stateDir := t.TempDir()
	m, st, blob := takeoverLayer(t, bl, stateDir)
	close(blob.hold) // nothing held here
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				errc <- nil
				return
			default:
			}
			name := names[i%len(names)]
			b, err := os.ReadFile(filepath.Join(m.Dir, name))
			if err == nil && !bytes.Equal(b, bl.files[name]) {
				err = errors.New(name + ": wrong bytes")
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	dev, init, err := m.Connection()
	if err != nil {
		t.Fatal(err)
	}
	m.Suspend()
	resume(t, m, dev, init, bl, st, stateDir)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("reader across the handover: %v", err)
	}
}
