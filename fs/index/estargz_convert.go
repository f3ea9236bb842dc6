package index

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// ctxCheckEvery is how many TOC entries are converted between checks of
// the context: often enough to stop a 4M-entry TOC promptly, rarely
// enough to cost nothing.
const ctxCheckEvery = 4096

// tocConverter builds an Index from TOC entries in TOC order, assigning
// inode numbers densely as inodes appear.
type tocConverter struct {
	lim      limits
	idx      *Index
	children map[uint64]map[string]uint64 // directory ino → name → ino
	paths    map[string]uint64            // clean path → ino ("" is the root)
	explicit map[uint64]bool              // directories that had their own TOC entry
	whiteout map[uint64]bool              // inodes made from ".wh." entries
	opaque   map[uint64]bool              // directories with a ".wh..wh..opq" entry
	bounds   []int64                      // sorted distinct stream starts, then the TOC offset
	nchunks  int
	file     *openFile // the regular file whose "chunk" entries may follow
}

// openFile tracks the last "reg" entry while its "chunk" entries arrive.
type openFile struct {
	name string
	ino  uint64
	size int64
	next int64 // file offset the next chunk must start at
	skip bool  // a hidden or whiteout file: its chunks are not indexed
}

// convertTOC turns the entries of an eStargz TOC into an Index.
//
//   - Entries are applied in TOC order, like a tar unpacker. A parent
//     directory with no entry of its own (or whose entry comes later) is
//     created implicitly with mode 0755, owner 0:0 and a zero mtime, as
//     MkdirAll would, minus the unpack time, which would make the index
//     depend on when it was built. A later entry for it sets its metadata.
//   - The root's metadata comes from an entry named "", "." or "./", which
//     must be a directory; without one the root is 0755 and root-owned.
//   - A path may appear once. The only repeat tolerated is a directory
//     entry whose metadata is identical to the first (some tar writers
//     emit such repeats; applying them changes nothing).
//   - "dir/.wh.x" becomes a 0/0 character device "x" with mode 0 in dir,
//     any content ignored; "dir/.wh..wh..opq" becomes the xattr
//     trusted.overlay.opaque=y on dir. A whiteout and a real entry of the
//     same name in one layer contradict each other and are refused.
//   - A "hardlink" names an earlier, non-directory, non-whiteout entry and
//     becomes another name for its inode; Nlink counts the names.
//   - A "reg" entry with Size > 0 is the file's first chunk; "chunk"
//     entries for the same name follow it. Chunks must be in order, cover
//     [0, Size) exactly and each carry a chunkDigest. A chunk's compressed
//     range runs from its Offset to the next larger stream start (any data
//     entry's Offset, or the TOC's offset); chunks sharing a stream differ
//     in InnerOffset.
//   - estargz's bookkeeping files at the root (the prefetch landmarks and
//     stargz.index.json) are left out of the tree.
func convertTOC(ctx context.Context, entries []*estargz.TOCEntry, tocOff int64, lim limits) (*Index, error) {
	if len(entries) > lim.entries+lim.chunks {
		return nil, Invalidf("TOC has %d entries, more than %d", len(entries), lim.entries+lim.chunks)
	}
	c := &tocConverter{
		lim:      lim,
		idx:      &Index{Format: FormatEStargz, Chunks: make(map[uint64][]Chunk)},
		children: make(map[uint64]map[string]uint64),
		paths:    make(map[string]uint64),
		explicit: make(map[uint64]bool),
		whiteout: make(map[uint64]bool),
		opaque:   make(map[uint64]bool),
	}
	c.newInode(Entry{Type: TypeDir, Mode: 0o755})
	c.paths[""] = RootIno
	if err := c.findBounds(entries, tocOff); err != nil {
		return nil, err
	}
	for i, e := range entries {
		if i%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if err := c.add(e); err != nil {
			return nil, err
		}
	}
	if err := c.closeFile(); err != nil {
		return nil, err
	}
	return c.finish(), nil
}

// findBounds checks every entry's numbers and collects the offsets where
// compressed streams start, which delimit the chunks' blob ranges.
func (c *tocConverter) findBounds(entries []*estargz.TOCEntry, tocOff int64) error {
	for _, e := range entries {
		if e == nil {
			return Invalidf("TOC has a null entry")
		}
		if err := checkNumbers(e, tocOff); err != nil {
			return Invalidf("entry %q: %v", e.Name, err)
		}
		if carriesData(e) {
			c.bounds = append(c.bounds, e.Offset)
		}
	}
	c.bounds = append(c.bounds, tocOff)
	slices.Sort(c.bounds)
	c.bounds = slices.Compact(c.bounds)
	return nil
}

// streamLength returns the compressed length of the stream starting at
// off, which findBounds has checked lies before the TOC.
func (c *tocConverter) streamLength(off int64) int64 {
	i, _ := slices.BinarySearch(c.bounds, off+1)
	return c.bounds[i] - off
}

func (c *tocConverter) add(e *estargz.TOCEntry) error {
	if e.Type == "chunk" {
		return c.addChunkEntry(e)
	}
	if err := c.closeFile(); err != nil {
		return err
	}
	name, err := cleanName(e.Name)
	if err != nil {
		return Invalidf("entry %q: %v", e.Name, err)
	}
	if err := c.addNamed(name, e); err != nil {
		return Invalidf("entry %q: %v", e.Name, err)
	}
	return nil
}

func (c *tocConverter) addNamed(name string, e *estargz.TOCEntry) error {
	if name == "" {
		return c.setRoot(e)
	}
	if name == estargz.PrefetchLandmark && e.Type == "reg" {
		c.idx.PrefetchEnd = e.Offset
	}
	if isBookkeeping(name, e.Type) {
		c.file = &openFile{name: name, size: e.Size, skip: true}
		return nil
	}
	dir, base := splitName(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return c.addWhiteout(dir, base, e)
	}
	parent, err := c.ensureDir(dir)
	if err != nil {
		return err
	}
	switch e.Type {
	case "hardlink":
		return c.addHardlink(parent, name, base, e)
	case "dir":
		return c.addDir(parent, name, base, e)
	}
	typ, ok := nodeType(e.Type)
	if !ok {
		return fmt.Errorf("unknown entry type %q", e.Type)
	}
	ent, err := nodeEntry(typ, e)
	if err != nil {
		return err
	}
	ino, err := c.link(parent, name, base, c.newInode(ent))
	if err != nil {
		return err
	}
	if typ == TypeReg {
		c.file = &openFile{name: name, ino: ino, size: e.Size}
		if e.Size > 0 {
			return c.addChunk(e)
		}
	}
	return nil
}

// nodeEntry converts an entry that makes an inode other than a directory.
func nodeEntry(typ Type, e *estargz.TOCEntry) (Entry, error) {
	ent, err := entryMeta(e)
	if err != nil {
		return ent, err
	}
	ent.Type = typ
	switch typ {
	case TypeReg:
		ent.Size = e.Size
	case TypeSymlink:
		if err := checkSymlinkTarget(e.LinkName); err != nil {
			return ent, err
		}
		ent.LinkTarget, ent.Size = e.LinkName, int64(len(e.LinkName))
	case TypeChar, TypeBlock:
		ent.DevMajor, ent.DevMinor, err = checkDevice(e.DevMajor, e.DevMinor)
	}
	return ent, err
}

// newInode appends an entry and returns its inode number. The entry
// limit is checked by link and ensureDir, which call it; the root is
// always allowed.
func (c *tocConverter) newInode(ent Entry) uint64 {
	ent.Ino = uint64(len(c.idx.Entries)) + RootIno
	c.idx.Entries = append(c.idx.Entries, ent)
	return ent.Ino
}

func (c *tocConverter) entry(ino uint64) *Entry { return &c.idx.Entries[ino-RootIno] }

// link adds a name for ino in directory parent, refusing a name that is
// taken. name is the full path, recorded for hardlink targets.
func (c *tocConverter) link(parent uint64, name, base string, ino uint64) (uint64, error) {
	if len(c.idx.Entries) > c.lim.entries {
		return 0, fmt.Errorf("more than %d entries in the layer", c.lim.entries)
	}
	kids := c.children[parent]
	if kids == nil {
		kids = make(map[string]uint64)
		c.children[parent] = kids
	}
	if old, ok := kids[base]; ok {
		if c.whiteout[old] || c.whiteout[ino] {
			return 0, fmt.Errorf("a whiteout and an entry both named %q", name)
		}
		return 0, fmt.Errorf("duplicate entry %q", name)
	}
	kids[base] = ino
	c.paths[name] = ino
	return ino, nil
}

// ensureDir returns the directory inode at name, creating it and its
// missing parents implicitly (see convertTOC).
func (c *tocConverter) ensureDir(name string) (uint64, error) {
	if ino, ok := c.paths[name]; ok {
		if c.whiteout[ino] {
			return 0, fmt.Errorf("a whiteout and an entry both named %q", name)
		}
		if c.entry(ino).Type != TypeDir {
			return 0, fmt.Errorf("%q has entries under it but is not a directory", name)
		}
		return ino, nil
	}
	dir, base := splitName(name)
	parent, err := c.ensureDir(dir)
	if err != nil {
		return 0, err
	}
	return c.link(parent, name, base, c.newInode(Entry{Type: TypeDir, Mode: 0o755}))
}

// finish sorts directory listings into the Index.
func (c *tocConverter) finish() *Index {
	c.idx.Children = make(map[uint64][]Dirent, len(c.children))
	for ino := range c.opaque {
		ent := c.entry(ino)
		if ent.Xattrs == nil {
			ent.Xattrs = make(map[string][]byte, 1)
		}
		ent.Xattrs[XattrOverlayOpaque] = []byte("y")
	}
	for dir, kids := range c.children {
		list := make([]Dirent, 0, len(kids))
		for name, ino := range kids {
			list = append(list, Dirent{Name: name, Ino: ino, Type: c.entry(ino).Type})
		}
		slices.SortFunc(list, func(a, b Dirent) int { return strings.Compare(a.Name, b.Name) })
		c.idx.Children[dir] = list
	}
	return c.idx
}

// sameDirMeta reports whether a repeated directory entry changes nothing.
func sameDirMeta(a, b Entry) bool {
	return a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.ModTime.Equal(b.ModTime) &&
		maps.EqualFunc(a.Xattrs, b.Xattrs, func(x, y []byte) bool { return string(x) == string(y) })
}

// parseChunkDigest refuses chunks that cannot be verified.
func parseChunkDigest(s string) (digest.Digest, error) {
	if s == "" {
		return "", fmt.Errorf("chunk has no chunkDigest: the layer has no chunk digests and cannot be verified")
	}
	d := digest.Digest(s)
	if err := validateDigest(d); err != nil {
		return "", fmt.Errorf("chunkDigest %q: %w", s, err)
	}
	return d, nil
}

// validateDigest is digest.Digest.Validate with a fast path for the
// sha256 digests every chunk carries: go-digest checks with a regular
// expression, which costs a tenth of indexing a large layer.
func validateDigest(d digest.Digest) error {
	const prefix = "sha256:"
	s := string(d)
	if len(s) != len(prefix)+64 || s[:len(prefix)] != prefix {
		return d.Validate()
	}
	for i := len(prefix); i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return d.Validate()
		}
	}
	return nil
}
