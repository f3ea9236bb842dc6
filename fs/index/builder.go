package index

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// header is one entry of a layer's archive as a format reader states it:
// the tar header fields the tree depends on, whatever carries them (an
// eStargz or zstd:chunked TOC entry, a tar header). The name is given
// apart, already cleaned by cleanName.
type header struct {
	// Type is the entry's type; 0 for one no layer may hold (TypeName
	// says which). Hardlinks are not a type: see Hardlink.
	Type Type
	// Hardlink makes the entry another name for LinkName's inode.
	Hardlink bool
	// TypeName is the format's own name of the type, for messages.
	TypeName           string
	Size               int64
	Mode               int64 // as tar.Header.Mode: Unix permission and setuid/setgid/sticky bits
	UID, GID           int64
	ModTime            time.Time
	LinkName           string // symlink target, or hardlink target as the archive names it
	DevMajor, DevMinor int64
	Xattrs             map[string][]byte
}

// treeBuilder turns the entries of a layer's archive, given one at a time
// in archive order, into an Index, assigning inode numbers densely as
// inodes appear. Every format reader feeds it, so the tree of a layer is
// the same whatever its format. The rules:
//
//   - Entries are applied in order, as a sequential unpack (umoci unpack
//     0.4.7, containerd's applier) applies a tar. A parent directory with
//     no entry of its own (or whose entry comes later) is created
//     implicitly with mode 0755, owner 0:0 and a zero mtime, as MkdirAll
//     would, minus the unpack time, which would make the index depend on
//     when it was built. A later entry for it sets its metadata.
//   - The root's metadata comes from an entry named "", "." or "./", which
//     must be a directory; without one the root is 0755 and root-owned.
//   - A later entry of a name replaces the earlier one, as it does on a
//     sequential unpack: the earlier entry is removed (a directory with
//     everything under it; a file's inode lives on if a hardlink names
//     it) and the later one takes the name, unless both are directories,
//     which merge, the later entry's metadata replacing the earlier's.
//     A directory that replaces a non-directory or a whiteout of this
//     layer is opaque: the unpack removed what lower layers had there.
//   - "dir/.wh.x" hides x of the LOWER layers only: an entry x of the same
//     layer stays, whether it comes before or after the whiteout. Without
//     one the whiteout becomes a 0/0 character device "x" with mode 0 in
//     dir, any content ignored. With a directory x the directory becomes
//     opaque (trusted.overlay.opaque=y), keeping what this layer puts in
//     it; with any other entry that entry alone hides the lower x.
//     "dir/.wh..wh..opq" makes dir opaque. A whiteout or opaque marker in
//     a directory this layer has already made opaque or whited out hides
//     nothing and is dropped, and an opaque marker or a whiteout of an
//     earlier directory drops the whiteouts under it, and the directories
//     made only to hold them (a sequential unpack leaves nothing there).
//   - A hardlink names an earlier, non-directory, non-whiteout entry, as
//     it is at that point of the archive, and becomes another name for
//     its inode; Nlink counts the names.
//   - A regular file's content is given as chunks (addChunk) after its
//     entry and before the next one; they must be in order and cover
//     [0, Size) exactly.
//
// Inodes that replacements leave without a name are dropped, and the rest
// renumbered densely, by finish.
type treeBuilder struct {
	lim      limits
	idx      *Index
	dirents  map[uint64][]Dirent // directory ino → its names, in archive order
	paths    map[string]uint64   // clean path → ino ("" is the root)
	whiteout map[uint64]bool     // inodes made from ".wh." entries
	opaque   map[uint64]bool     // directories that hide the lower layers' content
	replaced replaced            // what replacements need: see builder_replace.go
	nchunks  int
	chunks   chunkStore
	file     *openFile // the regular file whose chunks may follow, or nil
	fileBuf  openFile  // what file points to, kept here to save an allocation per file
	lastDir  struct {  // the last directory ensureDir found
		name string
		ino  uint64
	}
}

// openFile tracks the last regular file entry while its chunks arrive.
type openFile struct {
	name  string
	ino   uint64
	size  int64
	next  int64 // file offset the next chunk must start at
	skip  bool  // a hidden or whiteout file: its chunks are not indexed
	first int   // where its chunks start in the builder's chunk block
}

// newTreeBuilder starts the Index of a layer in format; sizeHint is how
// many entries to make room for at once.
func newTreeBuilder(format Format, lim limits, sizeHint int) *treeBuilder {
	b := &treeBuilder{
		lim:      lim,
		idx:      &Index{Format: format, Entries: make([]Entry, 0, sizeHint)},
		dirents:  make(map[uint64][]Dirent),
		paths:    make(map[string]uint64, sizeHint),
		whiteout: make(map[uint64]bool),
		opaque:   make(map[uint64]bool),
	}
	b.chunks.files = make([]fileChunks, 0, sizeHint)
	b.newInode(Entry{Type: TypeDir, Mode: 0o755})
	b.paths[""] = RootIno
	return b
}

// openFile makes f the open file.
func (b *treeBuilder) openFile(f openFile) {
	b.fileBuf = f
	b.file = &b.fileBuf
}

// skipFile opens a file whose content is not part of the tree (a
// format's bookkeeping file), so that its chunks are accepted and dropped.
func (b *treeBuilder) skipFile(name string, size int64) error {
	if err := b.closeFile(); err != nil {
		return err
	}
	b.openFile(openFile{name: name, size: size, skip: true})
	return nil
}

// add applies the next entry of the archive, named name (cleaned by
// cleanName; "" is the root). The regular file it makes, if any, is open
// for addChunk until the next call. Errors say what is wrong with the
// entry; the caller names it.
func (b *treeBuilder) add(name string, h *header) error {
	if err := b.closeFile(); err != nil {
		return err
	}
	if name == "" {
		return b.setRoot(h)
	}
	dir, base := splitName(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return b.addWhiteout(dir, base, h)
	}
	parent, err := b.ensureDir(dir, true)
	if err != nil {
		return err
	}
	switch {
	case h.Hardlink:
		return b.addHardlink(parent, name, base, h)
	case h.Type == TypeDir:
		return b.addDir(parent, name, base, h)
	case h.Type < TypeDir || h.Type > TypeFifo:
		return fmt.Errorf("unknown entry type %q", h.TypeName)
	}
	ent, err := b.nodeEntry(h)
	if err != nil {
		return err
	}
	b.unlinkIfPresent(parent, name, base)
	ino, err := b.link(parent, name, base, b.newInode(ent))
	if err != nil {
		return err
	}
	if h.Type == TypeReg {
		b.openFile(openFile{name: name, ino: ino, size: h.Size, first: len(b.chunks.block)})
	}
	return nil
}

// nodeEntry converts an entry that makes an inode other than a directory.
func (b *treeBuilder) nodeEntry(h *header) (Entry, error) {
	ent, err := entryMeta(h)
	if err != nil {
		return ent, err
	}
	ent.Type = h.Type
	switch h.Type {
	case TypeReg:
		ent.Size = h.Size
	case TypeSymlink:
		if err := checkSymlinkTarget(h.LinkName); err != nil {
			return ent, err
		}
		ent.LinkTarget, ent.Size = h.LinkName, int64(len(h.LinkName))
	case TypeChar, TypeBlock:
		ent.DevMajor, ent.DevMinor, err = checkDevice(h.DevMajor, h.DevMinor)
	}
	return ent, err
}

// newInode appends an entry and returns its inode number. The entry
// limit is checked by link, which its callers call next; the root is
// always allowed.
func (b *treeBuilder) newInode(ent Entry) uint64 {
	ent.Ino = uint64(len(b.idx.Entries)) + RootIno
	b.idx.Entries = growDoubling(b.idx.Entries)
	b.idx.Entries = append(b.idx.Entries, ent)
	return ent.Ino
}

// growDoubling makes room for one more element in s by doubling its
// capacity when it is full. append grows large slices by a quarter, which
// for the few big slices of an index allocates five times their size.
func growDoubling[E any](s []E) []E {
	if len(s) < cap(s) {
		return s
	}
	return slices.Grow(s, max(len(s), 64))
}

func (b *treeBuilder) entry(ino uint64) *Entry { return &b.idx.Entries[ino-RootIno] }

// link adds a name for ino in directory parent; callers remove an earlier
// entry of that name first. name is the full path, which paths maps to
// the inode for hardlink targets and for finding the names taken in
// parent.
func (b *treeBuilder) link(parent uint64, name, base string, ino uint64) (uint64, error) {
	if len(b.idx.Entries) > b.lim.entries {
		return 0, fmt.Errorf("more than %d entries in the layer", b.lim.entries)
	}
	if _, ok := b.paths[name]; ok {
		return 0, fmt.Errorf("internal error: %q linked twice", name)
	}
	b.paths[name] = ino
	list := append(b.dirents[parent], Dirent{Name: base, Ino: ino})
	b.dirents[parent] = list
	b.replaced.linked(parent, base, len(list)-1)
	return ino, nil
}

// ensureDir returns the directory inode at name, creating it and its
// missing parents implicitly (see treeBuilder). real is false for the
// parents of whiteouts, which a sequential unpack does not create.
func (b *treeBuilder) ensureDir(name string, real bool) (uint64, error) {
	// Entries come grouped by directory, so most have the last entry's
	// parent; and a path that named a directory always does (replacements
	// forget it).
	if name == b.lastDir.name && b.lastDir.ino != 0 {
		if real {
			b.replaced.markReal(b, name)
		}
		return b.lastDir.ino, nil
	}
	ino, err := b.findDir(name, real)
	if err == nil {
		b.lastDir.name, b.lastDir.ino = name, ino
	}
	return ino, err
}

func (b *treeBuilder) findDir(name string, real bool) (uint64, error) {
	if ino, ok := b.paths[name]; ok {
		switch {
		case b.whiteout[ino] && real:
			return b.dirOverWhiteout(name)
		case b.whiteout[ino]: // addWhiteout drops whiteouts under whiteouts
			return 0, fmt.Errorf("internal error: whiteout %q as a parent", name)
		case b.entry(ino).Type != TypeDir:
			return 0, fmt.Errorf("%q has entries under it but is not a directory", name)
		}
		if real {
			b.replaced.markReal(b, name)
		}
		return ino, nil
	}
	dir, base := splitName(name)
	parent, err := b.findDir(dir, real)
	if err != nil {
		return 0, err
	}
	ino, err := b.link(parent, name, base, b.newInode(Entry{Type: TypeDir, Mode: 0o755}))
	if err == nil && !real {
		b.replaced.markWhiteoutOnly(ino)
	}
	return ino, err
}

// finish completes the Index once every entry has been added: directory
// listings sorted by name, opaque markers, chunks by inode. The caller
// has closed the last file (closeFile) and completed the chunks.
func (b *treeBuilder) finish() *Index {
	b.compact()
	b.idx.Chunks = make(map[uint64][]Chunk, len(b.chunks.files))
	for _, f := range b.chunks.files {
		b.idx.Chunks[f.ino] = f.chunks
	}
	for ino := range b.opaque {
		ent := b.entry(ino)
		if ent.Xattrs == nil {
			ent.Xattrs = make(map[string][]byte, 1)
		}
		ent.Xattrs[XattrOverlayOpaque] = []byte("y")
	}
	b.idx.Children = make(map[uint64][]Dirent, len(b.dirents))
	all := make([]Dirent, 0, len(b.paths)-1) // every name but the root's
	for dir, list := range b.dirents {
		if b.replaced.tombstones {
			if list = slices.DeleteFunc(list, isTombstone); len(list) == 0 {
				continue
			}
		}
		if !slices.IsSortedFunc(list, compareDirents) {
			slices.SortFunc(list, compareDirents)
		}
		for i := range list {
			list[i].Type = b.entry(list[i].Ino).Type // final once the archive is read
		}
		// One exactly sized array for all listings, not one per directory.
		all = append(all, list...)
		b.idx.Children[dir] = all[len(all)-len(list) : len(all) : len(all)]
	}
	return b.idx
}

func compareDirents(a, b Dirent) int { return strings.Compare(a.Name, b.Name) }
