package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
)

// fsName is the FUSE source name of every layer mount, so stale mounts of
// a dead daemon can be found in /proc/self/mountinfo.
const fsName = "strata"

// MountType is the filesystem type of a layer's mount in the mount table.
const MountType = "fuse." + fsName

// LayerMount is one layer served by FUSE at a directory.
type LayerMount struct {
	Dir  string
	conn *conn
	lfs  *layerFS
	cfg  MountConfig
	// failedOnTakeover is how many requests a dead server left
	// unanswered were failed with EIO when this one took over.
	failedOnTakeover int
}

// dropPageCache drops the kernel's cached pages and attributes of every
// inode of the layer.
func (m *LayerMount) dropPageCache() error {
	n := uint64(m.lfs.idx.Info().Entries)
	for ino := index.RootIno; ino < index.RootIno+n; ino++ {
		if err := m.conn.invalInode(ino); err != nil {
			return err
		}
	}
	return nil
}

// MountConfig is how a layer is mounted.
type MountConfig struct {
	// StateDir, when set, keeps what another process needs to take the
	// mount's connection over (see Connection and ResumeLayer): the modes
	// of its open large files and its unanswered requests.
	StateDir string
}

// stateNames are the files a mount keeps in its state directory: the
// INIT request and where the layer comes from (saved by the pool), the
// open files' modes and the unanswered requests (by the mount).
var stateNames = []string{"init", "layer", "modes", "pending"}

// removeState removes the state the layer mounted at dir kept in
// stateDir, once its connection is gone.
func removeState(stateDir, dir string) {
	if stateDir == "" {
		return
	}
	for _, name := range stateNames {
		os.Remove(filepath.Join(stateDir, filepath.Base(dir)+"."+name))
	}
}

func (cfg MountConfig) file(dir, name string) string {
	if cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(cfg.StateDir, filepath.Base(dir)+"."+name)
}

// MountLayer serves the layer read-only at dir (which must exist).
//
// When content keeps whole files (WithWholeFiles) and the kernel takes
// them as backing files, files of 1 MiB or more whose content is all local
// are opened in FUSE passthrough mode: the kernel reads the local file
// itself. Otherwise, or where passthrough is unavailable (Linux < 6.9, no
// CAP_SYS_ADMIN, a cache on overlayfs), every read goes through the daemon.
func MountLayer(dir string, idx View, content *Content, cfg MountConfig) (*LayerMount, error) {
	if _, err := idx.Entry(index.RootIno); err != nil {
		return nil, fmt.Errorf("layer index has no root: %w", err)
	}
	// A new connection has no open file and no request: what a dead
	// connection's server saved (its backing IDs, its requests) is not
	// this one's, and answering opens from it fails them for good.
	for _, name := range []string{"modes", "pending"} {
		if p := cfg.file(dir, name); p != "" {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("mount state of %s: %w", dir, err)
			}
		}
	}
	m, err := newLayerMount(dir, idx, content, cfg)
	if err != nil {
		return nil, err
	}
	if err := m.lfs.modes.load(cfg.file(dir, "modes")); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/fuse: %w", err)
	}
	dev := os.NewFile(uintptr(fd), "/dev/fuse")
	// As fusermount does, with the options the kernel's FUSE knows. The
	// descriptor is only readable (and pollable) once mounted.
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=%d,group_id=%d,max_read=%d,allow_other,default_permissions",
		fd, st.Mode&unix.S_IFMT, os.Geteuid(), os.Getegid(), maxReadSize)
	if err := unix.Mount(fsName, dir, MountType, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_RDONLY, data); err != nil {
		dev.Close()
		return nil, fmt.Errorf("mounting layer at %s: %w", dir, err)
	}
	if err := m.start(dev); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return nil, err
	}
	go m.conn.serve()
	if err := m.conn.waitInit(30 * time.Second); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		m.conn.close()
		return nil, fmt.Errorf("mounting layer at %s: %w", dir, err)
	}
	if err := pollHack(dir); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		m.conn.close()
		return nil, fmt.Errorf("mounting layer at %s: %w", dir, err)
	}
	m.ready()
	return m, nil
}

// pollHack makes the kernel learn, once per connection, that the layer
// does not implement poll (ENOSYS for FUSE_POLL), before anything in this
// process opens a file of the mount: Go registers every file it opens
// with its poller, and an epoll_ctl on a FUSE file that still sends POLL
// would wait for an answer while holding the epoll instance that this
// process's own FUSE reads wait on. go-fuse's ProtocolServer answers the
// lookup and open of its reserved name for this; the file is opened and
// polled with plain system calls, outside Go's poller.
func pollHack(dir string) error {
	fd, err := unix.Open(filepath.Join(dir, ".go-fuse-epoll-hack"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("poll probe: %w", err)
	}
	defer unix.Close(fd)
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
}

// ResumeLayer serves the layer mounted at dir through the live FUSE
// connection dev, which another process served (and may have died
// serving), and whose INIT request was init (see Connection). Inode
// numbers and handles the kernel holds stay valid: they are the index's,
// and the state saved in cfg.StateDir. Requests the other process read
// and did not answer are sent again by the kernel (Linux 6.9+) or fail
// with EIO once.
func ResumeLayer(dir string, dev *os.File, init []byte, idx View, content *Content, cfg MountConfig) (*LayerMount, error) {
	m, err := newLayerMount(dir, idx, content, cfg)
	if err != nil {
		dev.Close()
		return nil, err
	}
	if err := m.lfs.modes.load(cfg.file(dir, "modes")); err != nil {
		slog.Warn("fs: modes of open files unreadable; starting from none", "dir", dir, "error", err)
	}
	if err := m.start(dev); err != nil {
		return nil, err
	}
	// takeOver before the loop starts: no request is answered before the
	// ProtocolServer knows the INIT.
	failed, what, err := m.conn.takeOver(init)
	if err != nil {
		m.conn.dev.Close()
		m.conn.pending.close()
		return nil, fmt.Errorf("taking over the layer at %s: %w", dir, err)
	}
	m.failedOnTakeover = failed
	go m.conn.serve()
	slog.Info("fs: layer connection taken over", "dir", dir, "requests", what)
	m.ready()
	return m, nil
}

func newLayerMount(dir string, idx View, content *Content, cfg MountConfig) (*LayerMount, error) {
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, err
		}
	}
	return &LayerMount{Dir: dir, lfs: newLayerFS(idx, content), cfg: cfg}, nil
}

// start makes the conn of dev; MountLayer then starts its loop before the
// mount (the kernel's INIT must be read), ResumeLayer after the takeover.
func (m *LayerMount) start(dev *os.File) error {
	c, err := newConn(dev, m.lfs, m.lfs.content.whole != nil, m.cfg.file(m.Dir, "pending"))
	if err != nil {
		return err
	}
	c.local = m.lfs.readIsLocal
	m.conn, m.lfs.conn = c, c
	return nil
}

// ready finishes a mount whose connection is initialized.
func (m *LayerMount) ready() {
	m.lfs.noOpendir.Store(m.conn.kernelFlags&fuse.CAP_NO_OPENDIR_SUPPORT != 0)
	if w := m.lfs.content.whole; w != nil {
		if err := probePassthrough(m.conn, w.files); err != nil {
			logPassthroughOff(m.Dir, err)
		} else {
			m.lfs.passthrough.Store(true)
		}
	}
	m.lfs.openless.Store(openless(m.lfs.idx.Info(), m.lfs.passthrough.Load()))
	if err := setReadAhead(m.Dir, kernelReadAheadKiB); err != nil {
		slog.Warn("fs: kernel read-ahead left at its default", "dir", m.Dir, "error", err)
	}
}

// openCostBytes is what one file's OPEN and RELEASE cost, in bytes of
// large files read through the daemon rather than by passthrough: the two
// round trips take ~70 µs on the bench machine, in which passthrough
// reads ~100 KB more of a cached file than the daemon does (3 GB/s
// against about 1 GB/s).
const openCostBytes = 100 << 10

// openless says whether the kernel should open a layer's files without
// asking (FUSE_NO_OPEN_SUPPORT: the first OPEN answered ENOSYS is the
// connection's last, and no RELEASE follows an open). Every file is then
// read through the daemon with its pages kept, so an open and a read of a
// file the kernel holds cost no round trip at all; but no file can be
// opened in passthrough mode, which needs an OPEN. So a layer goes
// without opens when passthrough is unavailable, or when the opens of
// its files would cost more than passthrough saves on its large ones
// (info.LargeBytes against openCostBytes a file): most layers, whose
// files are mostly small. A layer indexed before files were counted keeps
// its opens.
func openless(info index.Info, passthrough bool) bool {
	if !passthrough {
		return true
	}
	return info.Files > 0 && int64(info.Files)*openCostBytes >= info.LargeBytes
}

// Connection returns what another process needs to take this mount's
// connection over with ResumeLayer: a duplicate of its /dev/fuse
// descriptor (the caller closes it) and its INIT request.
func (m *LayerMount) Connection() (*os.File, []byte, error) {
	fd, err := unix.FcntlInt(uintptr(m.conn.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), slices.Clone(m.conn.init), nil
}

// Passthrough reports whether the kernel reads this layer's whole local
// files itself (FUSE passthrough).
func (m *LayerMount) Passthrough() bool { return m.lfs.passthrough.Load() }

// Suspend stops serving the layer without unmounting it: requests read
// so far are answered, later ones wait in the kernel for the process that
// takes the connection over (see ResumeLayer). The saved state stays.
func (m *LayerMount) Suspend() {
	m.conn.stop()
	m.conn.close()
	m.lfs.modes.close()
}

// kernelReadAheadKiB is the page-cache read-ahead of layer mounts. The
// kernel gives a FUSE mount 128 KiB; with more, a sequential reader keeps
// several 1 MiB reads in flight, which roughly doubles cached throughput.
const kernelReadAheadKiB = 4096

// setReadAhead sets the read-ahead of the filesystem mounted at dir
// through its backing device info in sysfs.
func setReadAhead(dir string, kib int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(fmt.Sprint(kib)), 0)
}

// Unmount stops serving the layer. A layer may be in use after its mount
// point is gone: an overlay a container still runs on holds a private
// clone of it, and the FUSE connection lives as long as that clone. So if
// the server does not stop soon after the unmount, its connection is
// aborted: the holder's reads fail (as they would with the daemon gone)
// instead of this call, and daemon shutdown, hanging forever.
func (m *LayerMount) Unmount() error {
	var st unix.Stat_t
	statErr := unix.Stat(m.Dir, &st)
	err := unix.Unmount(m.Dir, 0)
	if errors.Is(err, unix.EBUSY) {
		// Busy at its own mount point: detach it; the abort below ends
		// the connection if a holder keeps it.
		err = unix.Unmount(m.Dir, unix.MNT_DETACH)
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		err = nil
	}
	select {
	case <-m.conn.done:
	case <-time.After(unmountGrace):
		if statErr != nil {
			return fmt.Errorf("unmounting layer %s: server still running and its device is unknown: %w", m.Dir, statErr)
		}
		slog.Warn("fs: layer still in use after unmount; aborting its FUSE connection", "dir", m.Dir)
		if err := abortConnection(st.Dev); err != nil {
			return fmt.Errorf("unmounting layer %s: %w", m.Dir, err)
		}
		<-m.conn.done
	}
	m.conn.close()
	m.lfs.modes.close()
	removeState(m.cfg.StateDir, m.Dir)
	if err != nil {
		return fmt.Errorf("unmounting layer %s: %w", m.Dir, err)
	}
	return nil
}

// unmountGrace is how long a layer's server may take to stop after its
// mount point is unmounted before its connection is aborted.
const unmountGrace = 2 * time.Second

var abortMu sync.Mutex

// abortConnection aborts the FUSE connection of the filesystem on device
// dev through the fusectl filesystem, mounting fusectl when needed: every
// request on it fails at once, and its server's loop ends.
func abortConnection(dev uint64) error {
	// One at a time: another call's fusectl mount, made for its write,
	// goes away with that call.
	abortMu.Lock()
	defer abortMu.Unlock()
	const ctl = "/sys/fs/fuse/connections"
	p := fmt.Sprintf("%s/%d/abort", ctl, unix.Minor(dev))
	if _, err := os.Stat(p); err != nil {
		// Not mounted (systemd mounts it at boot; containers and minimal
		// systems may not): mount it for this write, and leave no trace.
		if merr := unix.Mount("fusectl", ctl, "fusectl", 0, ""); merr != nil && !errors.Is(merr, unix.EBUSY) {
			return fmt.Errorf("mounting fusectl: %w", merr)
		} else if merr == nil {
			defer unix.Unmount(ctl, unix.MNT_DETACH)
		}
	}
	return os.WriteFile(p, []byte("1"), 0)
}
