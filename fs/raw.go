package fs

import (
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawLayer is go-fuse's raw filesystem of a layer mount, less the requests
// a read-only layer does not need.
//
// Directories are served without OPENDIR and RELEASEDIR. A layer's
// directories never change, so an open directory needs no state of its
// own. A kernel that offers FUSE_NO_OPENDIR_SUPPORT (Linux 5.1+) takes
// ENOSYS for OPENDIR as "never ask again": from then on it opens
// directories itself with no file handle (Fh 0) and caches their listings
// (FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE are its defaults then), and sends
// no RELEASEDIR. That halves the round trips of a walk over a cold kernel
// cache (find, du: OPENDIR, READDIRPLUS, READDIRPLUS at EOF, RELEASEDIR per
// directory become the two READDIRPLUS) and leaves none for a walk over a
// warm one.
//
// go-fuse's node API has no way to answer OPENDIR with ENOSYS (a
// NodeOpendirHandler's errors are its own to return, and every listing
// goes through a handle), so this wraps the raw filesystem it builds: a
// READDIRPLUS or READDIR with Fh 0 opens a handle in-process, reads one
// reply from it at the requested offset (dirHandle seeks) and releases it.
//
// Files are closed without FLUSH: see Flush.
type rawLayer struct {
	fuse.RawFileSystem
	// offered is set once the kernel's INIT offered the capability; a
	// kernel that did not would fail every opendir on ENOSYS.
	offered atomic.Bool
	// opendirs and flushes count the OPENDIR and FLUSH requests the
	// kernel sent.
	opendirs, flushes atomic.Int64
}

func (r *rawLayer) Init(s *fuse.Server) {
	r.RawFileSystem.Init(s)
	r.offered.Store(s.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT != 0)
}

func (r *rawLayer) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.opendirs.Add(1)
	if r.offered.Load() {
		return fuse.ENOSYS
	}
	return r.RawFileSystem.OpenDir(cancel, in, out)
}

func (r *rawLayer) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, out, r.RawFileSystem.ReadDirPlus)
}

func (r *rawLayer) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, out, r.RawFileSystem.ReadDir)
}

// withHandle runs read with in's handle, or with one opened for this
// request alone when the kernel opened the directory without us.
func (r *rawLayer) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList,
	read func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(cancel, in, out)
	}
	var opened fuse.OpenOut
	if st := r.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader}, &opened); !st.Ok() {
		return st
	}
	own := *in
	own.Fh = opened.Fh
	st := read(cancel, &own, out)
	r.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: opened.Fh})
	return st
}

func (r *rawLayer) ReleaseDir(in *fuse.ReleaseIn) {
	if in.Fh != 0 { // Fh 0 is go-fuse's placeholder entry, never a handle
		r.RawFileSystem.ReleaseDir(in)
	}
}

func (r *rawLayer) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if in.Fh == 0 {
		return fuse.OK // nothing to sync on a read-only layer
	}
	return r.RawFileSystem.FsyncDir(cancel, in)
}

// Flush answers ENOSYS, which the kernel takes as "never send FLUSH on this
// mount again": nothing is written to a layer, so a close has nothing to
// flush, and each FLUSH would be a round trip per file read. Files are also
// opened FOPEN_NOFLUSH, which spares even the first FLUSH on Linux 5.16+.
func (r *rawLayer) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	r.flushes.Add(1)
	return fuse.ENOSYS
}
