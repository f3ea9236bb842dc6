package fs

import (
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// noOpendir serves a layer's directories without OPENDIR and RELEASEDIR.
//
// A layer's directories never change, so an open directory needs no state
// of its own. A kernel that offers FUSE_NO_OPENDIR_SUPPORT (Linux 5.1+)
// takes ENOSYS for OPENDIR as "never ask again": from then on it opens
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
type noOpendir struct {
	fuse.RawFileSystem
	// offered is set once the kernel's INIT offered the capability; a
	// kernel that did not would fail every opendir on ENOSYS.
	offered atomic.Bool
	// opendirs counts the OPENDIR requests the kernel sent.
	opendirs atomic.Int64
}

func (r *noOpendir) Init(s *fuse.Server) {
	r.RawFileSystem.Init(s)
	r.offered.Store(s.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT != 0)
}

func (r *noOpendir) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.opendirs.Add(1)
	if r.offered.Load() {
		return fuse.ENOSYS
	}
	return r.RawFileSystem.OpenDir(cancel, in, out)
}

func (r *noOpendir) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, out, r.RawFileSystem.ReadDirPlus)
}

func (r *noOpendir) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, out, r.RawFileSystem.ReadDir)
}

// withHandle runs read with in's handle, or with one opened for this
// request alone when the kernel opened the directory without us.
func (r *noOpendir) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList,
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

func (r *noOpendir) ReleaseDir(in *fuse.ReleaseIn) {
	if in.Fh != 0 { // Fh 0 is go-fuse's placeholder entry, never a handle
		r.RawFileSystem.ReleaseDir(in)
	}
}

func (r *noOpendir) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if in.Fh == 0 {
		return fuse.OK // nothing to sync on a read-only layer
	}
	return r.RawFileSystem.FsyncDir(cancel, in)
}
