package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
)

// fsName is the FUSE source name of every layer mount, so stale mounts of
// a dead daemon can be found in /proc/self/mountinfo.
const fsName = "strata"

// LayerMount is one layer served by FUSE at a directory.
type LayerMount struct {
	Dir    string
	server *fuse.Server
	lfs    *layerFS
	raw    *rawLayer
}

// MountLayer serves the layer read-only at dir (which must exist).
//
// When content keeps whole files (WithWholeFiles) and the kernel takes
// them as backing files, files of 1 MiB or more whose content is all local
// are opened in FUSE passthrough mode: the kernel reads the local file
// itself. Otherwise, or where passthrough is unavailable (Linux < 6.9, no
// CAP_SYS_ADMIN, a cache on overlayfs), every read goes through the daemon.
func MountLayer(dir string, idx View, content *Content) (*LayerMount, error) {
	lfs := &layerFS{idx: idx, content: content}
	rootEntry, err := idx.Entry(index.RootIno)
	if err != nil {
		return nil, fmt.Errorf("layer index has no root: %w", err)
	}
	root := newNode(lfs, rootEntry)
	lfs.root = root
	timeout := kernelCacheTimeout
	opts := &gofs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true, // modes are the image's, exactly
		RootStableAttr:  &gofs.StableAttr{Ino: index.RootIno},
		MountOptions: fuse.MountOptions{
			AllowOther:    true,
			FsName:        fsName,
			Name:          fsName,
			DirectMount:   true,
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			// The kernel then caches ACLs, so "ls -l" does not ask the
			// daemon for system.posix_acl_* on every file, every time.
			EnableAcl: true,
			// See rawLayer.
			ExtraCapabilities: fuse.CAP_NO_OPENDIR_SUPPORT,
			// The kernel checks permissions from the modes we report.
			Options: []string{"ro", "default_permissions"},
			// go-fuse asks for FUSE passthrough whenever the kernel offers
			// it. MaxStackDepth stays at its default, 1: backing files must
			// be on an unstacked filesystem, and overlayfs can still be
			// mounted over this mount (the kernel allows two levels).
		},
	}
	if content.files == nil {
		// Passthrough makes the kernel count the mount as one level of
		// stacking; without whole files there is nothing to gain for it.
		opts.MountOptions.DisabledCapabilities = fuse.CAP_PASSTHROUGH
	}
	raw := &rawLayer{RawFileSystem: gofs.NewNodeFS(root, opts)}
	server, err := mountRaw(dir, raw, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mounting layer at %s: %w", dir, err)
	}
	if content.files != nil {
		if err := probePassthrough(server, content.files); err != nil {
			logPassthroughOff(dir, err)
		} else {
			lfs.passthrough.Store(true)
		}
	}
	if err := setReadAhead(dir, kernelReadAheadKiB); err != nil {
		slog.Warn("fs: kernel read-ahead left at its default", "dir", dir, "error", err)
	}
	return &LayerMount{Dir: dir, server: server, lfs: lfs, raw: raw}, nil
}

// mountRaw mounts fsys at dir and serves it, as gofs.Mount does for the
// raw filesystem it builds itself.
func mountRaw(dir string, fsys fuse.RawFileSystem, opts *fuse.MountOptions) (*fuse.Server, error) {
	server, err := fuse.NewServer(fsys, dir, opts)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		// The serve loop ends by itself: there is no mount to read from.
		return nil, err
	}
	return server, nil
}

// Passthrough reports whether the kernel reads this layer's whole local
// files itself (FUSE passthrough).
func (m *LayerMount) Passthrough() bool { return m.lfs.passthrough.Load() }

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
	done := make(chan error, 1)
	go func() {
		err := m.server.Unmount()
		if err != nil {
			// Busy at its own mount point: detach it; the abort below
			// ends the connection.
			err = unix.Unmount(m.Dir, unix.MNT_DETACH)
			if errors.Is(err, unix.EINVAL) {
				err = nil
			}
		}
		done <- err
	}()
	stopped := make(chan struct{})
	go func() { m.server.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(unmountGrace):
		if statErr != nil {
			return fmt.Errorf("unmounting layer %s: server still running and its device is unknown: %w", m.Dir, statErr)
		}
		slog.Warn("fs: layer still in use after unmount; aborting its FUSE connection", "dir", m.Dir)
		if err := abortConnection(st.Dev); err != nil {
			return fmt.Errorf("unmounting layer %s: %w", m.Dir, err)
		}
		<-stopped
	}
	if err := <-done; err != nil {
		return fmt.Errorf("unmounting layer %s: %w", m.Dir, err)
	}
	return nil
}

// unmountGrace is how long a layer's server may take to stop after its
// mount point is unmounted before its connection is aborted.
const unmountGrace = 2 * time.Second

// abortConnection aborts the FUSE connection of the filesystem on device
// dev through the fusectl filesystem, mounting fusectl when needed: every
// request on it fails at once, and its server's loop ends.
func abortConnection(dev uint64) error {
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
