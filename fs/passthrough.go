package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// FUSE passthrough: an open of a file whose content is one local file (see
// wholefile.go) is answered with a backing ID, which this process got by
// registering that file's descriptor with the kernel; the kernel then
// serves reads and mmap from it without asking the daemon. MountLayer
// probes once per mount, so that a layer on a system without passthrough
// neither assembles whole files nor counts passthrough opens.

// openModes keeps the opens of each large file in one I/O mode. The kernel
// allows an inode one mode at a time: while an open of it is served by the
// daemon (cached I/O), a passthrough open fails, and while one is
// passthrough, a cached one fails, both as EIO to whoever opens it; and
// all passthrough opens of an inode must name the same backing file. So a
// file switches to passthrough only when nothing has it open, and stays
// there while anything does. (The kernel drops an open's mode when the
// file is closed, before the daemon sees the release, so these counts are
// never below the kernel's.)
//
// The counts outlive the process: they are saved to a small file at every
// change, so that a daemon taking the connection over (after a crash or
// an upgrade) knows which files are open in which mode, and the backing
// IDs, which belong to the connection, not to the process.
type openModes struct {
	mu    sync.Mutex
	files map[uint64]*fileModes
	state string // where the counts are saved; "" for nowhere
}

// fileModes is the opens of one file.
type fileModes struct {
	Daemon  int   `json:"d,omitempty"` // opens read through the daemon
	Direct  int   `json:"p,omitempty"` // opens backed by a local file
	Backing int32 `json:"b,omitempty"` // their backing ID, while Direct > 0
	// file is the local file with all the content, registered as Backing
	// by this process (nil for a backing file a previous process
	// registered: the kernel holds it).
	file *os.File
}

func newOpenModes() *openModes { return &openModes{files: map[uint64]*fileModes{}} }

// load reads the counts saved at path, which are then saved there. A
// missing file is no opens.
func (m *openModes) load(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state = path
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	files := map[uint64]*fileModes{}
	if err := json.Unmarshal(b, &files); err != nil {
		return fmt.Errorf("open file modes %s: %w", path, err)
	}
	for ino, f := range files {
		if f == nil || f.Daemon < 0 || f.Direct < 0 || (f.Direct > 0) != (f.Backing > 0) {
			return fmt.Errorf("open file modes %s: inode %d: inconsistent counts", path, ino)
		}
	}
	m.files = files
	return nil
}

// save writes the counts where load read them; the caller holds mu. The
// file is replaced whole (a crash mid-write leaves the previous one) and
// not synced: it serves a daemon that takes over from a dead process on a
// running machine, and a machine that restarts has no connection left.
func (m *openModes) save() {
	if m.state == "" {
		return
	}
	b, err := json.Marshal(m.files)
	if err == nil {
		tmp := m.state + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, m.state)
		}
	}
	if err != nil {
		slog.Warn("fs: saving the modes of open files failed; a daemon taking over may fail opens of large files", "error", err)
	}
}

// openLarge opens a file of minWholeFileSize or more: from its whole local
// file when there is one, passthrough works, and no open of the file reads
// through the daemon; through the daemon otherwise.
func (l *layerFS) openLarge(ctx context.Context, e index.Entry, out *fuse.OpenOut) fuse.Status {
	m := l.modes
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[e.Ino]
	if f == nil {
		f = &fileModes{}
		m.files[e.Ino] = f
	}
	if f.Direct == 0 && f.Daemon == 0 && l.passthrough.Load() {
		file, err := l.content.whole.open(e)
		switch {
		case err == nil:
			id, en := l.conn.registerBacking(file)
			if en != 0 {
				file.Close()
				slog.WarnContext(ctx, "fs: whole file not registered as backing file; reading through the daemon", "inode", e.Ino, "error", en)
				break
			}
			f.file, f.Backing = file, id
		case !errdefs.IsNotFound(err) && !errors.Is(err, store.ErrUnverified):
			slog.WarnContext(ctx, "fs: whole file not opened; reading through the daemon", "inode", e.Ino, "error", err)
		}
	}
	if f.Backing > 0 {
		f.Direct++
		m.save()
		metricPassthroughOpens.Inc()
		// Its reads reach the kernel's backing file, not the daemon: a
		// recording cannot see which chunks they take.
		l.content.noteWhole(e.Ino)
		out.Fh = fhDirect
		out.OpenFlags = fuse.FOPEN_PASSTHROUGH | fuse.FOPEN_NOFLUSH
		out.BackingID = f.Backing
		return fuse.OK
	}
	f.Daemon++
	m.save()
	out.Fh = fhDaemon
	return fuse.OK
}

// releaseLarge ends an open made by openLarge. The last direct open gives
// the backing file back; the last open read through the daemon completes
// the file's whole local file, if its readers left every chunk cached, for
// the next open.
func (l *layerFS) releaseLarge(ino, fh uint64) {
	m := l.modes
	m.mu.Lock()
	f := m.files[ino]
	if f == nil {
		m.mu.Unlock()
		return // opened before a takeover that found no saved modes
	}
	lastDaemon := false
	switch fh {
	case fhDirect:
		f.Direct--
		if f.Direct <= 0 {
			if en := l.conn.unregisterBacking(f.Backing); en != 0 {
				slog.Warn("fs: backing file not unregistered", "inode", ino, "error", en)
			}
			if f.file != nil {
				f.file.Close()
			}
			f.Direct, f.Backing, f.file = 0, 0, nil
		}
	case fhDaemon:
		f.Daemon--
		lastDaemon = f.Daemon <= 0
		f.Daemon = max(f.Daemon, 0)
	}
	if f.Direct == 0 && f.Daemon == 0 {
		delete(m.files, ino)
	}
	m.save()
	m.mu.Unlock()
	if lastDaemon && l.passthrough.Load() {
		if e, err := l.idx.Entry(ino); err == nil {
			l.content.whole.complete(e, nil)
		}
	}
}

// close gives back every backing file this process holds open; the
// kernel keeps those it still uses.
func (m *openModes) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range m.files {
		if f.file != nil {
			f.file.Close()
			f.file = nil
		}
	}
}

// openCount is how many opens of ino the modes count, for tests.
func (m *openModes) openCount(ino uint64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.files[ino]; f != nil {
		return f.Daemon + f.Direct
	}
	return 0
}

// probePassthrough checks that the kernel takes files of the whole-file
// cache as backing files of this mount: it needs Linux ≥ 6.9 built with
// FUSE passthrough, CAP_SYS_ADMIN, and the cache on a filesystem that is
// not itself stacked (overlayfs): with MaxStackDepth 1 the kernel refuses
// those (ELOOP), so that overlayfs can stack on the FUSE mount.
func probePassthrough(c *conn, files *store.Files) error {
	if c.flags&fuse.CAP_PASSTHROUGH == 0 {
		return errors.New("the kernel does not offer FUSE passthrough (Linux 6.9 or later, CONFIG_FUSE_PASSTHROUGH)")
	}
	f, err := files.Probe()
	if err != nil {
		return err
	}
	defer f.Close()
	id, en := c.registerBacking(f)
	switch en {
	case 0:
	case syscall.ELOOP:
		return fmt.Errorf("the cache is on a stacked filesystem (overlayfs?), which cannot back files of a FUSE mount that overlayfs stacks on: %w", en)
	case syscall.EPERM:
		return fmt.Errorf("registering a backing file needs CAP_SYS_ADMIN: %w", en)
	default:
		return fmt.Errorf("registering a cache file as backing file: %w", en)
	}
	if en := c.unregisterBacking(id); en != 0 {
		return fmt.Errorf("unregistering the probe backing file: %w", en)
	}
	return nil
}

// passthroughOffLogged makes the first mount without passthrough say so
// at info level, and the others only at debug level.
var passthroughOffLogged atomic.Bool

func logPassthroughOff(dir string, err error) {
	level := slog.LevelDebug
	if passthroughOffLogged.CompareAndSwap(false, true) {
		level = slog.LevelInfo
	}
	slog.Log(context.Background(), level, "fs: FUSE passthrough unavailable; cached files are read through the daemon",
		"dir", dir, "error", err)
}
