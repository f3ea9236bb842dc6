package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/errdefs"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stratafs/strata/store"
)

// FUSE passthrough: an open of a file whose content is one local file (see
// wholefile.go) returns a handle with that file's descriptor; go-fuse
// registers it with the kernel as the inode's backing file, and the kernel
// then serves reads and mmap from it without asking the daemon. go-fuse
// falls back to ordinary reads when registration fails; MountLayer probes
// once per mount so that it does not come to that, and so that a layer on
// a system without passthrough neither assembles whole files nor counts
// passthrough opens.

var (
	_ gofs.FilePassthroughFder = (*directHandle)(nil)
	_ gofs.FileReader          = (*directHandle)(nil)
	_ gofs.FileReleaser        = (*directHandle)(nil)
	_ gofs.FileReleaser        = (*daemonHandle)(nil)
)

// openModes keeps the opens of one large file in one I/O mode. The kernel
// allows an inode one mode at a time: while an open of it is served by the
// daemon (cached I/O), a passthrough open fails, and while one is
// passthrough, a cached one fails, both as EIO to whoever opens it. So a
// file switches to passthrough only when nothing has it open, and stays
// there while anything does. (The kernel drops an open's mode when the
// file is closed, before the daemon sees the release, so these counts are
// never below the kernel's.)
type openModes struct {
	mu     sync.Mutex
	daemon int      // opens read through the daemon
	direct int      // opens backed by file
	file   *os.File // the local file with all the content, while direct > 0
}

// openLarge opens a file of minWholeFileSize or more: from its whole local
// file when there is one, passthrough works, and no open of the file reads
// through the daemon; through the daemon otherwise.
func (n *node) openLarge(ctx context.Context) (gofs.FileHandle, uint32, syscall.Errno) {
	m := n.opens
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.direct == 0 && m.daemon == 0 && n.layer.passthrough.Load() {
		f, err := n.layer.content.openWhole(n.e)
		switch {
		case err == nil:
			m.file = f
		case !errdefs.IsNotFound(err) && !errors.Is(err, store.ErrUnverified):
			slog.WarnContext(ctx, "fs: whole file not opened; reading through the daemon", "inode", n.ino, "error", err)
		}
	}
	if m.file != nil {
		m.direct++
		metricPassthroughOpens.Inc()
		// Its reads reach the kernel's backing file, not the daemon: a
		// recording cannot see which chunks they take.
		n.layer.content.noteWhole(n.ino)
		// go-fuse drops FOPEN_KEEP_CACHE when passthrough is in effect,
		// and keeps it when it falls back to reads through Read.
		return &directHandle{n: n, f: m.file}, fileOpenFlags, 0
	}
	m.daemon++
	return &daemonHandle{n: n}, fileOpenFlags, 0
}

// daemonHandle is an open of a large file read through the daemon.
type daemonHandle struct{ n *node }

// Release of the file's last daemon open completes its whole file, if
// its readers left every chunk cached, for the next open.
func (h *daemonHandle) Release(ctx context.Context) syscall.Errno {
	m := h.n.opens
	m.mu.Lock()
	m.daemon--
	last := m.daemon == 0
	m.mu.Unlock()
	if last && h.n.layer.passthrough.Load() {
		h.n.layer.content.completeWhole(h.n.e, nil)
	}
	return 0
}

// directHandle is an open of a file backed by a local file with all of
// its content, which the kernel reads itself.
type directHandle struct {
	n *node
	f *os.File // shared by the node's direct opens; open while this is
}

func (h *directHandle) PassthroughFd() (int, bool) { return int(h.f.Fd()), true }

// Read is called only when passthrough is not in effect after all (go-fuse
// could not register the backing file): the daemon reads the local file.
func (h *directHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	metricPassthroughFallbackReads.Inc()
	got, err := h.f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		metricReadErrors.Inc()
		return nil, errno(ctx, "read", err, "inode", h.n.ino, "offset", off, "size", len(dest))
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func (h *directHandle) Release(ctx context.Context) syscall.Errno {
	m := h.n.opens
	m.mu.Lock()
	defer m.mu.Unlock()
	m.direct--
	if m.direct == 0 {
		m.file.Close()
		m.file = nil
	}
	return 0
}

// probePassthrough checks that the kernel takes files of the whole-file
// cache as backing files of this mount: it needs Linux ≥ 6.9 built with
// FUSE passthrough, CAP_SYS_ADMIN, and the cache on a filesystem that is
// not itself stacked (overlayfs): with MaxStackDepth 1 the kernel refuses
// those (ELOOP), so that overlayfs can stack on the FUSE mount.
func probePassthrough(server *fuse.Server, files *store.Files) error {
	if server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		return errors.New("the kernel does not offer FUSE passthrough (Linux 6.9 or later, CONFIG_FUSE_PASSTHROUGH)")
	}
	f, err := files.Probe()
	if err != nil {
		return err
	}
	defer f.Close()
	id, en := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	switch en {
	case 0:
	case syscall.ELOOP:
		return fmt.Errorf("the cache is on a stacked filesystem (overlayfs?), which cannot back files of a FUSE mount that overlayfs stacks on: %w", en)
	case syscall.EPERM:
		return fmt.Errorf("registering a backing file needs CAP_SYS_ADMIN: %w", en)
	default:
		return fmt.Errorf("registering a cache file as backing file: %w", en)
	}
	if en := server.UnregisterBackingFd(id); en != 0 {
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
