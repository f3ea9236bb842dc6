package fs

import (
	"context"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stratafs/strata/fs/index"
)

// layerFS answers the FUSE requests of one read-only layer with nothing
// kept per inode or per open: a node ID is the index's inode number, a
// file handle says only in which I/O mode the file was opened (see
// openModes), and every answer comes from the layer's index. So a new
// process can take over a live FUSE connection (see conn.go) and answer
// requests about inodes and handles the kernel got from the old one: the
// inode numbers come from the same metadata DB. It also keeps the daemon's
// memory independent of how many inodes the kernel caches.
//
// It implements go-fuse's RawFileSystem; go-fuse's ProtocolServer decodes
// the requests and encodes the replies. go-fuse's node API is not used:
// it keeps an Inode per kernel inode and refuses node IDs it did not hand
// out itself, which is exactly what a resumed connection sends.
//
// Directories are served without OPENDIR and RELEASEDIR: a kernel that
// offers FUSE_NO_OPENDIR_SUPPORT (Linux 5.1+) takes ENOSYS for OPENDIR as
// "never ask again", opens directories itself and caches their listings.
// That halves the round trips of a walk over a cold kernel cache (find,
// du: OPENDIR, READDIRPLUS, READDIRPLUS at EOF, RELEASEDIR per directory
// become the two READDIRPLUS) and leaves none for a walk over a warm one.
// Files are closed without FLUSH (see Flush).
type layerFS struct {
	fuse.RawFileSystem // ENOSYS for what a read-only layer does not do

	idx     View
	content *Content
	conn    *conn // for backing files (passthrough); set before serving

	// passthrough is set once the mount is known to take whole files as
	// FUSE passthrough backing files (see probePassthrough).
	passthrough atomic.Bool
	modes       *openModes
	nlinks      sync.Map // directory inode → its link count (dirNlink)

	// openless is set when the layer's files are opened by the kernel
	// alone (see openless in mount.go).
	openless atomic.Bool

	// listing is the last directory listed: the kernel reads a listing in
	// several READDIRPLUS requests (at least one more to see its end).
	listing atomic.Pointer[dirListing]
	// recent holds entries looked up lately (see cachedEntry).
	recent [recentEntries]atomic.Pointer[index.Entry]
	// lookedUpIno is the last small file LOOKUP found, and lookedUpSeq
	// the connection's request count then (see push). Both are written
	// and read by the read loop alone (LOOKUP and GETXATTR are answered
	// there), so the pair is never torn; no allocation per lookup.
	lookedUpIno, lookedUpSeq atomic.Uint64

	// opendirs and flushes count the OPENDIR and FLUSH requests the
	// kernel sent; noOpendir is set when the kernel offered
	// FUSE_NO_OPENDIR_SUPPORT.
	opendirs, flushes, opensRefused, releases, reads atomic.Int64
	noOpendir                                        atomic.Bool
}

type dirListing struct {
	ino     uint64
	entries []index.Dirent
}

func newLayerFS(idx View, content *Content) *layerFS {
	return &layerFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), idx: idx, content: content, modes: newOpenModes()}
}

func (l *layerFS) String() string { return fsName }

// kernelCacheTimeout is how long the kernel may trust entries, attributes
// and negative lookups of an immutable layer.
const kernelCacheTimeout = 24 * time.Hour

// fileOpenFlags are the open flags of every file. Layer content never
// changes, so the kernel keeps its pages across opens; nothing is written,
// so a close sends no FLUSH (a round trip per file read otherwise).
const fileOpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH

func typeBits(t index.Type) uint32 {
	switch t {
	case index.TypeDir:
		return syscall.S_IFDIR
	case index.TypeReg:
		return syscall.S_IFREG
	case index.TypeSymlink:
		return syscall.S_IFLNK
	case index.TypeChar:
		return syscall.S_IFCHR
	case index.TypeBlock:
		return syscall.S_IFBLK
	case index.TypeFifo:
		return syscall.S_IFIFO
	}
	return 0
}

// fillAttr reports e exactly as a full unpack of the layer would.
func fillAttr(e *index.Entry, out *fuse.Attr) {
	out.Ino = e.Ino
	out.Mode = typeBits(e.Type) | (e.Mode & 0o7777)
	if e.Type == index.TypeSymlink {
		// A symlink's own mode bits mean nothing on Linux and are always
		// 0777 on disk, whatever the archive's header says.
		out.Mode = syscall.S_IFLNK | 0o777
	}
	out.Size = uint64(e.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Owner = fuse.Owner{Uid: e.UID, Gid: e.GID}
	out.Nlink = max(e.Nlink, 1)
	if e.Type == index.TypeDir {
		out.Nlink = 2 // the layerFS counts the subdirectories (dirNlink)
	}
	if e.Type == index.TypeChar || e.Type == index.TypeBlock {
		out.Rdev = uint32(unixMkdev(e.DevMajor, e.DevMinor))
	}
	sec, nsec := uint64(0), uint32(0)
	if !e.ModTime.IsZero() {
		// Times before 1970 too: the kernel reads the field as signed.
		sec, nsec = uint64(e.ModTime.Unix()), uint32(e.ModTime.Nanosecond())
	}
	out.Mtime, out.Mtimensec = sec, nsec
	out.Atime, out.Atimensec = sec, nsec
	out.Ctime, out.Ctimensec = sec, nsec
}

// unixMkdev encodes a device number as Linux's new_encode_dev, which is
// what the 32-bit FUSE rdev field carries.
func unixMkdev(major, minor uint32) uint64 {
	return uint64((minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12)
}

// dirNlink is directory ino's link count as an unpack's filesystem gives
// it: 2 and one for each subdirectory. It is counted once per directory
// (from its listing) and kept.
func (l *layerFS) dirNlink(ino uint64) uint32 {
	if n, ok := l.nlinks.Load(ino); ok {
		return n.(uint32)
	}
	ents, err := l.idx.ReadDir(ino)
	if err != nil {
		return 2 // the listing says why when it is read
	}
	n := uint32(2)
	for _, d := range ents {
		if d.Type == index.TypeDir {
			n++
		}
	}
	l.nlinks.Store(ino, n)
	return n
}

// fillDirNlink gives a directory's attributes its link count.
func (l *layerFS) fillDirNlink(e *index.Entry, out *fuse.Attr) {
	if e.Type == index.TypeDir {
		out.Nlink = l.dirNlink(e.Ino)
	}
}

func fillEntry(e *index.Entry, out *fuse.EntryOut) {
	out.NodeId = e.Ino
	out.Generation = 0
	fillAttr(e, &out.Attr)
	out.SetEntryTimeout(kernelCacheTimeout)
	out.SetAttrTimeout(kernelCacheTimeout)
}

// ctxOf is the context of a request: done when the kernel interrupts it.
func ctxOf(h *fuse.InHeader, cancel <-chan struct{}) context.Context {
	return &fuse.Context{Caller: h.Caller, Cancel: cancel}
}

// entry returns the entry of node ID ino.
func (l *layerFS) entry(ctx context.Context, op string, ino uint64) (index.Entry, fuse.Status) {
	e, err := l.cachedEntry(ino)
	if err != nil {
		return e, fuse.Status(errno(ctx, op, err, "inode", ino))
	}
	return e, fuse.OK
}

// recentEntries is how many entries a layer keeps at hand, by inode
// number modulo this: a file is asked about several times in a row (a
// LOOKUP, overlayfs's getxattr, a READ, whether that READ is local), and
// each index read is a bbolt transaction. A few KiB a layer.
const recentEntries = 32

// cachedEntry returns the entry of inode ino, from the recent ones when
// it is there. Entries of a layer never change.
func (l *layerFS) cachedEntry(ino uint64) (index.Entry, error) {
	slot := &l.recent[ino%recentEntries]
	if p := slot.Load(); p != nil && p.Ino == ino {
		return *p, nil
	}
	e, err := l.idx.Entry(ino)
	if err == nil {
		l.remember(e)
	}
	return e, err
}

// remember keeps e at hand for cachedEntry.
func (l *layerFS) remember(e index.Entry) {
	l.recent[e.Ino%recentEntries].Store(&e)
}

func (l *layerFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	ctx := ctxOf(h, cancel)
	var (
		e     index.Entry
		found bool
		err   error
	)
	switch name {
	case ".":
		// The kernel revives an inode from its node ID alone this way.
		e, err = l.idx.Entry(h.NodeId)
		found = err == nil
	case "..":
		return fuse.Status(syscall.ESTALE) // the index keeps no parents
	default:
		e, found, err = l.idx.Lookup(h.NodeId, name)
	}
	if err != nil {
		return fuse.Status(errno(ctx, "lookup", err, "parent", h.NodeId, "name", name))
	}
	if !found {
		// A negative entry, cached as long as positive ones.
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(kernelCacheTimeout)
		return fuse.OK
	}
	l.remember(e)
	if name != "." && e.Type == index.TypeReg && e.Size <= maxPush && l.conn != nil {
		l.lookedUpIno.Store(e.Ino)
		l.lookedUpSeq.Store(l.conn.seq.Load())
	}
	fillEntry(&e, out)
	l.fillDirNlink(&e, &out.Attr)
	return fuse.OK
}

// Forget needs nothing: no state is kept per inode.
func (l *layerFS) Forget(nodeid, nlookup uint64) {}

func (l *layerFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	e, st := l.entry(ctxOf(&in.InHeader, cancel), "getattr", in.NodeId)
	if !st.Ok() {
		return st
	}
	fillAttr(&e, &out.Attr)
	l.fillDirNlink(&e, &out.Attr)
	out.SetTimeout(kernelCacheTimeout)
	return fuse.OK
}

func (l *layerFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if in.Mask&2 != 0 { // W_OK
		return fuse.EROFS
	}
	return fuse.OK
}

func (l *layerFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	l.opendirs.Add(1)
	if l.noOpendir.Load() {
		return fuse.ENOSYS
	}
	// A kernel without FUSE_NO_OPENDIR_SUPPORT: a handle of no meaning,
	// and the listing cached all the same (layers never change).
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (l *layerFS) ReleaseDir(in *fuse.ReleaseIn) {}

func (l *layerFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status { return fuse.OK }

// readDir returns the listing of directory ino, from the last listing
// when it is the same directory.
func (l *layerFS) readDir(ctx context.Context, ino uint64) ([]index.Dirent, fuse.Status) {
	if last := l.listing.Load(); last != nil && last.ino == ino {
		return last.entries, fuse.OK
	}
	kids, err := l.idx.ReadDir(ino)
	if err != nil {
		return nil, fuse.Status(errno(ctx, "readdir", err, "inode", ino))
	}
	l.listing.Store(&dirListing{ino: ino, entries: kids})
	return kids, fuse.OK
}

func (l *layerFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.list(cancel, in, out, false)
}

// ReadDirPlus lists with attributes for subdirectories, so the kernel has
// them when a walk descends; other entries are left for a LOOKUP of their
// own (a zero node ID in a READDIRPLUS reply means "no attributes for this
// one", not ENOENT). Answering every file of a listing costs a kernel
// inode each, which made walks that only need names and types (find,
// d_type) several times slower than on local disk; commands that stat
// every file (ls -l, tar) pay a LOOKUP per file instead.
func (l *layerFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.list(cancel, in, out, true)
}

// list adds the entries of directory in.NodeId from position in.Offset:
// "." and "..", then the sorted listing; an entry's offset is its position
// plus one, so a listing resumes anywhere without a handle.
//
// The dots are listed as every disk file system lists them: overlayfs
// takes a merged directory's "." and ".." from its lowest layer, so
// without them `ls -a` in a writable mount showed neither. The index keeps
// no parents: ".." carries the directory's own inode number (overlayfs
// puts the right one in a merged directory's listing).
func (l *layerFS) list(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	ctx := ctxOf(&in.InHeader, cancel)
	kids, st := l.readDir(ctx, in.NodeId)
	if !st.Ok() {
		return st
	}
	const dots = 2
	for i := int(min(in.Offset, uint64(len(kids)+dots))); i < len(kids)+dots; i++ {
		if i < dots {
			de := fuse.DirEntry{Name: ".."[:i+1], Ino: in.NodeId, Mode: syscall.S_IFDIR, Off: uint64(i) + 1}
			if plus {
				// No attributes: the kernel looks up neither dot.
				if out.AddDirLookupEntry(de) == nil {
					break
				}
			} else if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		k := &kids[i-dots]
		de := fuse.DirEntry{Name: k.Name, Ino: k.Ino, Mode: typeBits(k.Type), Off: uint64(i) + 1}
		if !plus {
			if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			break
		}
		if k.Type == index.TypeDir {
			if e, err := l.idx.Entry(k.Ino); err == nil {
				fillEntry(&e, eo)
				l.fillDirNlink(&e, &eo.Attr)
			}
		}
	}
	return fuse.OK
}

func (l *layerFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	e, st := l.entry(ctxOf(h, cancel), "readlink", h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if e.Type != index.TypeSymlink {
		return nil, fuse.EINVAL
	}
	return []byte(e.LinkTarget), fuse.OK
}

// GetXAttr and ListXAttr answer as a filesystem with xattrs does, even
// for a layer that has none: no such attribute (ENODATA), an empty list.
// Answering ENOSYS would save a round trip per lookup (the kernel would
// stop asking the mount and answer EOPNOTSUPP itself), but containerd's
// differ (continuity) takes EOPNOTSUPP for security.capability as an
// error, so a diff over a Strata lower layer, BuildKit's export of a
// build step on a lazy base among them, would fail.
func (l *layerFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	e, st := l.entry(ctxOf(h, cancel), "getxattr", h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	if attr == metacopyXattr {
		l.push(e)
	}
	v, ok := e.Xattrs[attr]
	if !ok || !servedXattr(&e, attr) {
		return 0, fuse.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

// metacopyXattr is what overlayfs asks of every regular file of a lower
// layer it looks up, just before the file is opened and read, if it is.
const metacopyXattr = "trusted.overlay.metacopy"

// maxPush is the largest file push hands the kernel unasked.
const maxPush = 128 << 10

// push hands the kernel the content of small file e, when every byte of
// it is cached, for its page cache: overlayfs asks for e's metacopy xattr
// when it looks e up, which it does to open it, so the READ that would
// follow costs no round trip (a third of those of a walk that reads every
// small file, such as tar). Only while no recording watches the layer:
// it would not see these reads.
//
// And only right after the kernel looked e up (its LOOKUP the request
// before this one), e having one name. The kernel stores the data page by
// page, each locked; a page being read stays locked until its READ is
// answered, and the push runs in the read loop, so a READ of e queued
// behind this request would never be read: the loop would wait for the
// page, and the page for the loop (a container reading a file whose pages
// were dropped while another overlayfs over the same layer looked it up
// hung both, and the daemon's loop). A file the kernel has just looked up
// under its only name was open nowhere, and overlayfs asks for this xattr
// before it opens it; a file it knew already may be being read.
func (l *layerFS) push(e index.Entry) {
	if e.Type != index.TypeReg || e.Size <= 0 || e.Size > maxPush || e.Nlink > 1 || l.content.recording.active() || l.conn == nil {
		return
	}
	if l.lookedUpIno.Load() != e.Ino || l.conn.seq.Load() != l.lookedUpSeq.Load()+1 {
		return
	}
	if !l.content.cached(e, 0, e.Size) {
		return
	}
	buf := pushBufs.Get().(*[]byte)
	defer pushBufs.Put(buf)
	msg := (*buf)[:storeHeader+e.Size]
	n, err := l.content.ReadAt(context.Background(), e, msg[storeHeader:], 0)
	if err != nil || int64(n) != e.Size {
		return
	}
	if err := l.conn.store(e.Ino, msg); err == nil {
		metricPushedFiles.Inc()
	}
}

var pushBufs = sync.Pool{New: func() any { b := make([]byte, storeHeader+maxPush); return &b }}

// servedXattr says whether e's xattr name is served: a user.* xattr only
// on a regular file or a directory, where Linux allows them (xattr(7));
// a layer's tar may give one to a symlink, fifo or device, which an unpack
// fails to set (umoci and buildah refuse such a layer) and which, listed,
// would make overlayfs's copy-up fail (chmod of a fifo: "No data
// available").
func servedXattr(e *index.Entry, name string) bool {
	return !strings.HasPrefix(name, "user.") || e.Type == index.TypeReg || e.Type == index.TypeDir
}

func (l *layerFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	e, st := l.entry(ctxOf(h, cancel), "listxattr", h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	names := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		if servedXattr(&e, k) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var buf []byte
	for _, k := range names {
		buf = append(append(buf, k...), 0)
	}
	if len(dest) < len(buf) {
		return uint32(len(buf)), fuse.ERANGE
	}
	return uint32(copy(dest, buf)), fuse.OK
}

func (l *layerFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	// A read-only layer has no free space; report its size so df is sane.
	info := l.idx.Info()
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(info.BlobSize+4095) / 4096
	out.Files = uint64(info.Entries)
	out.NameLen = 255
	return fuse.OK
}

// Open answers with a handle that says how the file was opened (see
// openModes); small files, and every file of a layer that keeps no whole
// files, are read through the daemon with the page cache kept.
func (l *layerFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	if l.openless.Load() {
		l.opensRefused.Add(1)
		return fuse.ENOSYS
	}
	ctx := ctxOf(&in.InHeader, cancel)
	e, st := l.entry(ctx, "open", in.NodeId)
	if !st.Ok() {
		return st
	}
	if l.content.recording.active() {
		l.content.noteOpen(e.Ino)
	}
	out.OpenFlags = fileOpenFlags
	if !l.large(&e) {
		return fuse.OK
	}
	return l.openLarge(ctx, e, out)
}

// large says whether e is opened through openModes: a regular file of
// minWholeFileSize or more of a layer that keeps whole files.
func (l *layerFS) large(e *index.Entry) bool {
	return e.Type == index.TypeReg && e.Size >= minWholeFileSize && l.content.whole != nil
}

func (l *layerFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	l.reads.Add(1)
	ctx := ctxOf(&in.InHeader, cancel)
	if in.Fh == fhDirect {
		// The kernel did not take the backing file after all.
		metricPassthroughFallbackReads.Inc()
	}
	e, st := l.entry(ctx, "read", in.NodeId)
	if !st.Ok() {
		return nil, st
	}
	off := int64(in.Offset)
	got, err := l.content.ReadAt(ctx, e, buf, off)
	if err != nil {
		metricReadErrors.Inc()
		return nil, fuse.Status(errno(ctx, "read", err, "inode", e.Ino, "offset", off, "size", len(buf)))
	}
	if l.passthrough.Load() && !l.openless.Load() && l.large(&e) {
		l.content.whole.read(e, off)
	}
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

// readIsLocal says whether a read of size bytes at off of inode ino is
// served from the cache: every chunk it needs is cached. An error is
// answered at once too.
func (l *layerFS) readIsLocal(ino, off uint64, size uint32) bool {
	e, err := l.cachedEntry(ino)
	if err != nil || e.Type != index.TypeReg || int64(off) >= e.Size {
		return true
	}
	return l.content.cached(e, int64(off), int64(size))
}

func (l *layerFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	l.releases.Add(1)
	if in.Fh == fhPlain {
		return
	}
	l.releaseLarge(in.NodeId, in.Fh)
}

// Flush answers ENOSYS, which the kernel takes as "never send FLUSH on this
// mount again": nothing is written to a layer, so a close has nothing to
// flush, and each FLUSH would be a round trip per file read. Files are also
// opened FOPEN_NOFLUSH, which spares even the first FLUSH on Linux 5.16+.
func (l *layerFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	l.flushes.Add(1)
	return fuse.ENOSYS
}

func (l *layerFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status { return fuse.OK }

func (l *layerFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	return fuse.ENOSYS // the kernel then seeks itself; there are no holes to find
}

// the names a Read or Release knows the open by.
const (
	fhPlain  = 0 // not counted in openModes
	fhDaemon = 1 // a large file read through the daemon
	fhDirect = 2 // a large file the kernel reads from its backing file
)
