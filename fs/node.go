package fs

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stratafs/strata/fs/index"
)

// node is one inode of a layer's FUSE tree, holding its decoded entry:
// layers never change, so attributes, xattrs and link targets are answered
// without touching the index again. Nodes live as long as the kernel holds
// the inode, so memory follows what the kernel caches, not the image size.
// (Xattr requests are never cached by the kernel, and overlayfs asks for
// its trusted.overlay.* attributes on every lookup in a lower layer.)
type node struct {
	gofs.Inode
	layer *layerFS
	ino   uint64
	e     index.Entry
	// opens is set for the regular files of minWholeFileSize or more of
	// a layer that keeps whole files, for them to be opened in passthrough
	// mode once it is known to work, and never in two modes at once.
	opens *openModes
	// listing is a directory's entries once listed. The kernel asks for a
	// listing in several READDIRPLUS requests (at least one more to see
	// its end), each with a handle of its own (see rawLayer), and keeps
	// the result in its own cache afterwards; the node lives as long as
	// the kernel keeps the directory's inode.
	listing atomic.Pointer[[]index.Dirent]
}

// newNode returns the node of entry e.
func newNode(layer *layerFS, e index.Entry) *node {
	n := &node{layer: layer, ino: e.Ino, e: e}
	if e.Type == index.TypeReg && e.Size >= minWholeFileSize && layer.content.files != nil {
		n.opens = &openModes{}
	}
	return n
}

// layerFS is what every node of one mounted layer shares.
type layerFS struct {
	idx     View
	content *Content
	// passthrough is set once the mount is known to take whole files as
	// FUSE passthrough backing files (see probePassthrough).
	passthrough atomic.Bool
	root        *node
}

var (
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.FileReaddirenter   = (*dirHandle)(nil)
	_ gofs.FileSeekdirer      = (*dirHandle)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeReader         = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeGetxattrer     = (*node)(nil)
	_ gofs.NodeListxattrer    = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
)

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
	out.Size = uint64(e.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Owner = fuse.Owner{Uid: e.UID, Gid: e.GID}
	out.Nlink = max(e.Nlink, 1)
	if e.Type == index.TypeDir {
		out.Nlink = 2
	}
	if e.Type == index.TypeChar || e.Type == index.TypeBlock {
		out.Rdev = uint32(unixMkdev(e.DevMajor, e.DevMinor))
	}
	sec, nsec := uint64(0), uint32(0)
	if !e.ModTime.IsZero() && e.ModTime.Unix() > 0 {
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

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	e, found, err := n.layer.idx.Lookup(n.ino, name)
	if err != nil {
		return nil, errno(ctx, "lookup", err, "parent", n.ino, "name", name)
	}
	if !found {
		return nil, syscall.ENOENT
	}
	fillAttr(&e, &out.Attr)
	child := newNode(n.layer, e)
	return n.NewInode(ctx, child, gofs.StableAttr{Mode: typeBits(e.Type), Ino: e.Ino}), 0
}

func (n *node) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillAttr(&n.e, &out.Attr)
	return 0
}

// OpendirHandle lists the directory and lets the kernel cache the listing
// (FOPEN_CACHE_DIR): a layer's directories never change.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	l := n.listing.Load()
	if l == nil {
		kids, err := n.layer.idx.ReadDir(n.ino)
		if err != nil {
			return nil, 0, errno(ctx, "readdir", err, "inode", n.ino)
		}
		l = &kids
		n.listing.Store(l)
	}
	return &dirHandle{dir: n, entries: *l}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle is an open directory: its entries (shared with the node, never
// changed), how far a reader got, and the entry last handed to go-fuse.
type dirHandle struct {
	dir     *node
	entries []index.Dirent
	mu      sync.Mutex // guards pos and cur
	pos     int
	cur     fuse.DirEntry
}

var _ gofs.FileLookuper = (*dirHandle)(nil)

// Lookup answers the lookups of a READDIRPLUS listing. Subdirectories are
// looked up, so the kernel has them when a walk descends; other entries
// are left for a LOOKUP of their own (a zero node ID in a READDIRPLUS
// reply means "no attributes for this one", not ENOENT). Instantiating
// every file of a listing costs a kernel inode and a daemon inode each,
// which made walks that only need names and types (find, d_type) several
// times slower than on local disk; commands that stat every file (ls -l,
// tar) pay a LOOKUP per file instead.
func (d *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	i := sort.Search(len(d.entries), func(i int) bool { return d.entries[i].Name >= name })
	isDir := i < len(d.entries) && d.entries[i].Name == name && d.entries[i].Type == index.TypeDir
	if !isDir {
		return nil, syscall.ENOENT
	}
	return d.dir.Lookup(ctx, name, out)
}

// Readdirent returns the next entry in d.cur: go-fuse copies it before it
// asks for another, and the listing stays in the index's compact form,
// which is what a walk over many directories allocates most.
func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pos >= len(d.entries) {
		return nil, 0
	}
	k := &d.entries[d.pos]
	d.pos++
	// Off is where reading resumes after this entry (see Seekdir).
	d.cur = fuse.DirEntry{Name: k.Name, Ino: k.Ino, Mode: typeBits(k.Type), Off: uint64(d.pos)}
	return &d.cur, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pos = int(min(off, uint64(len(d.entries))))
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.layer.content.recording.active() {
		n.layer.content.noteOpen(n.ino, func() string { return n.Path(nil) })
	}
	if n.opens != nil {
		return n.openLarge(ctx)
	}
	return nil, fileOpenFlags, 0
}

// fileOpenFlags are the open flags of every file. Layer content never
// changes, so the kernel keeps its pages across opens; nothing is written,
// so a close sends no FLUSH (a round trip per file read otherwise).
const fileOpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH

func (n *node) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	// go-fuse asks the node first; a handle with its own content answers.
	if r, ok := fh.(gofs.FileReader); ok {
		return r.Read(ctx, dest, off)
	}
	e := n.e
	got, err := n.layer.content.ReadAt(ctx, e, dest, off)
	if err != nil {
		metricReadErrors.Inc()
		return nil, errno(ctx, "read", err, "inode", n.ino, "offset", off, "size", len(dest))
	}
	if n.opens != nil && n.layer.passthrough.Load() {
		n.layer.content.wholeRead(e, off)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	e := n.e
	if e.Type != index.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(e.LinkTarget), 0
}

// Getxattr and Listxattr answer as a filesystem with xattrs does, even
// for a layer that has none: no such attribute (ENODATA), an empty list.
// Answering ENOSYS would save a round trip per lookup (the kernel would
// stop asking the mount and answer EOPNOTSUPP itself), but containerd's
// differ (continuity) takes EOPNOTSUPP for security.capability as an
// error, so a diff over a Strata lower layer, BuildKit's export of a
// build step on a lazy base among them, would fail.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	e := n.e
	v, ok := e.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	e := n.e
	names := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var buf []byte
	for _, k := range names {
		buf = append(append(buf, k...), 0)
	}
	if len(dest) < len(buf) {
		return uint32(len(buf)), syscall.ERANGE
	}
	return uint32(copy(dest, buf)), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	// A read-only layer has no free space; report its size so df is sane.
	info := n.layer.idx.Info()
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(info.BlobSize+4095) / 4096
	out.Files = uint64(info.Entries)
	out.NameLen = 255
	return 0
}

// kernelCacheTimeout is how long the kernel may trust entries, attributes
// and negative lookups of an immutable layer.
const kernelCacheTimeout = 24 * time.Hour
