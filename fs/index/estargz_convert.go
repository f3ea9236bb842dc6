package index

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// ctxCheckEvery is how many TOC entries are converted between checks of
// the context: often enough to stop a 4M-entry TOC promptly, rarely
// enough to cost nothing.
const ctxCheckEvery = 4096

// tocConverter builds an Index from the entries of an eStargz TOC, given
// one at a time in TOC order as the decoder reads them, assigning inode
// numbers densely as inodes appear. The rules:
//
//   - Entries are applied in TOC order, as a sequential unpack (umoci
//     unpack 0.4.7, containerd's applier) applies a tar. A parent
//     directory with no entry of its own (or whose entry comes later) is
//     created implicitly with mode 0755, owner 0:0 and a zero mtime, as
//     MkdirAll would, minus the unpack time, which would make the index
//     depend on when it was built. A later entry for it sets its metadata.
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
//   - A "hardlink" names an earlier, non-directory, non-whiteout entry, as
//     it is at that point of the TOC, and becomes another name for its
//     inode; Nlink counts the names.
//   - A "reg" entry with Size > 0 is the file's first chunk; "chunk"
//     entries for the same name follow it. Chunks must be in order, cover
//     [0, Size) exactly and each carry a chunkDigest. A chunk's compressed
//     range runs from its Offset to the next larger stream start (any data
//     entry's Offset, or the TOC's offset); chunks sharing a stream differ
//     in InnerOffset.
//   - estargz's bookkeeping files at the root (the prefetch landmarks and
//     stargz.index.json) are left out of the tree.
//   - Sizes and offsets may not be negative, and data offsets must lie
//     before the TOC.
//
// Inodes that replacements leave without a name are dropped, and the rest
// renumbered densely, by finish.
type tocConverter struct {
	lim      limits
	tocOff   int64
	idx      *Index
	dirents  map[uint64][]Dirent // directory ino → its names, in TOC order
	paths    map[string]uint64   // clean path → ino ("" is the root)
	whiteout map[uint64]bool     // inodes made from ".wh." entries
	opaque   map[uint64]bool     // directories that hide the lower layers' content
	replaced replaced            // what replacements need: see estargz_replace.go
	bounds   []int64             // offsets of data entries: stream starts
	raw      int                 // TOC entries read
	nchunks  int
	chunks   chunkStore
	file     *openFile // the regular file whose "chunk" entries may follow, or nil
	fileBuf  openFile  // what file points to, kept here to save an allocation per file
	lastDir  struct {  // the last directory ensureDir found
		name string
		ino  uint64
	}
	mtime timeCache
}

// openFile tracks the last "reg" entry while its "chunk" entries arrive.
type openFile struct {
	name  string
	ino   uint64
	size  int64
	next  int64 // file offset the next chunk must start at
	skip  bool  // a hidden or whiteout file: its chunks are not indexed
	first int   // where its chunks start in the converter's chunk block
}

// newTOCConverter starts the Index of a TOC at offset tocOff; addEntry
// applies each entry and finish completes the Index. sizeHint is how many
// entries to make room for at once.
func newTOCConverter(tocOff int64, lim limits, sizeHint int) *tocConverter {
	c := &tocConverter{
		lim:      lim,
		tocOff:   tocOff,
		idx:      &Index{Format: FormatEStargz, Entries: make([]Entry, 0, sizeHint)},
		dirents:  make(map[uint64][]Dirent),
		paths:    make(map[string]uint64, sizeHint),
		whiteout: make(map[uint64]bool),
		opaque:   make(map[uint64]bool),
	}
	c.chunks.files = make([]fileChunks, 0, sizeHint)
	c.newInode(Entry{Type: TypeDir, Mode: 0o755})
	c.paths[""] = RootIno
	return c
}

// sizeHint guesses from the size of a TOC's JSON (as its tar header
// claims) and of its compressed stream how many entries it holds. The
// compressed size bounds the guess, so that a header claiming a huge
// JSON cannot make a small blob allocate much; a wrong guess only costs
// some growing.
func sizeHint(jsonSize, compressedSize int64, lim limits) int {
	// estargz writes indented JSON: ~350 bytes a file with digests, ~130
	// a directory. Compressed, a file costs at least its digest's 32
	// random bytes.
	return int(min(jsonSize/256, compressedSize/16, int64(lim.entries)))
}

// openFile makes f the open file.
func (c *tocConverter) openFile(f openFile) {
	c.fileBuf = f
	c.file = &c.fileBuf
}

// addEntry checks and applies the next TOC entry.
func (c *tocConverter) addEntry(e *tocEntry) error {
	if c.raw++; c.raw > c.lim.entries+c.lim.chunks {
		return Invalidf("TOC has more than %d entries", c.lim.entries+c.lim.chunks)
	}
	if err := checkNumbers(e, c.tocOff); err != nil {
		return Invalidf("entry %q: %v", e.Name, err)
	}
	if carriesData(e) {
		c.bounds = append(c.bounds, e.Offset)
	}
	return c.add(e)
}

// streamLength returns the compressed length of the stream starting at
// off, which checkNumbers has checked lies before the TOC. bounds must be
// sorted and end with the TOC offset.
func (c *tocConverter) streamLength(off int64) int64 {
	i, _ := slices.BinarySearch(c.bounds, off+1)
	return c.bounds[i] - off
}

func (c *tocConverter) add(e *tocEntry) error {
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

func (c *tocConverter) addNamed(name string, e *tocEntry) error {
	if name == "" {
		return c.setRoot(e)
	}
	if name == estargz.PrefetchLandmark && e.Type == "reg" {
		c.idx.PrefetchEnd = e.Offset
	}
	if isBookkeeping(name, e.Type) {
		c.openFile(openFile{name: name, size: e.Size, skip: true})
		return nil
	}
	dir, base := splitName(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return c.addWhiteout(dir, base, e)
	}
	parent, err := c.ensureDir(dir, true)
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
	ent, err := c.nodeEntry(typ, e)
	if err != nil {
		return err
	}
	c.unlinkIfPresent(parent, name, base)
	ino, err := c.link(parent, name, base, c.newInode(ent))
	if err != nil {
		return err
	}
	if typ == TypeReg {
		c.openFile(openFile{name: name, ino: ino, size: e.Size, first: len(c.chunks.block)})
		if e.Size > 0 {
			return c.addChunk(e)
		}
	}
	return nil
}

// nodeEntry converts an entry that makes an inode other than a directory.
func (c *tocConverter) nodeEntry(typ Type, e *tocEntry) (Entry, error) {
	ent, err := c.entryMeta(e)
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
// limit is checked by link, which its callers call next; the root is
// always allowed.
func (c *tocConverter) newInode(ent Entry) uint64 {
	ent.Ino = uint64(len(c.idx.Entries)) + RootIno
	c.idx.Entries = growDoubling(c.idx.Entries)
	c.idx.Entries = append(c.idx.Entries, ent)
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

func (c *tocConverter) entry(ino uint64) *Entry { return &c.idx.Entries[ino-RootIno] }

// link adds a name for ino in directory parent; callers remove an earlier
// entry of that name first. name is the full path, which paths maps to
// the inode for hardlink targets and for finding the names taken in
// parent.
func (c *tocConverter) link(parent uint64, name, base string, ino uint64) (uint64, error) {
	if len(c.idx.Entries) > c.lim.entries {
		return 0, fmt.Errorf("more than %d entries in the layer", c.lim.entries)
	}
	if _, ok := c.paths[name]; ok {
		return 0, fmt.Errorf("internal error: %q linked twice", name)
	}
	c.paths[name] = ino
	list := append(c.dirents[parent], Dirent{Name: base, Ino: ino})
	c.dirents[parent] = list
	c.replaced.linked(parent, base, len(list)-1)
	return ino, nil
}

// ensureDir returns the directory inode at name, creating it and its
// missing parents implicitly (see tocConverter). real is false for the
// parents of whiteouts, which a sequential unpack does not create.
func (c *tocConverter) ensureDir(name string, real bool) (uint64, error) {
	// Entries come grouped by directory, so most have the last entry's
	// parent; and a path that named a directory always does (replacements
	// forget it).
	if name == c.lastDir.name && c.lastDir.ino != 0 {
		if real {
			c.replaced.markReal(c, name)
		}
		return c.lastDir.ino, nil
	}
	ino, err := c.findDir(name, real)
	if err == nil {
		c.lastDir.name, c.lastDir.ino = name, ino
	}
	return ino, err
}

func (c *tocConverter) findDir(name string, real bool) (uint64, error) {
	if ino, ok := c.paths[name]; ok {
		switch {
		case c.whiteout[ino] && real:
			return c.dirOverWhiteout(name)
		case c.whiteout[ino]: // addWhiteout drops whiteouts under whiteouts
			return 0, fmt.Errorf("internal error: whiteout %q as a parent", name)
		case c.entry(ino).Type != TypeDir:
			return 0, fmt.Errorf("%q has entries under it but is not a directory", name)
		}
		if real {
			c.replaced.markReal(c, name)
		}
		return ino, nil
	}
	dir, base := splitName(name)
	parent, err := c.findDir(dir, real)
	if err != nil {
		return 0, err
	}
	ino, err := c.link(parent, name, base, c.newInode(Entry{Type: TypeDir, Mode: 0o755}))
	if err == nil && !real {
		c.replaced.markWhiteoutOnly(ino)
	}
	return ino, err
}

// finish completes the Index once every entry has been added: chunk
// ranges, directory listings sorted by name, opaque markers.
func (c *tocConverter) finish() (*Index, error) {
	if err := c.closeFile(); err != nil {
		return nil, err
	}
	c.compact()
	c.bounds = append(c.bounds, c.tocOff)
	slices.Sort(c.bounds)
	c.bounds = slices.Compact(c.bounds)
	c.idx.Chunks = make(map[uint64][]Chunk, len(c.chunks.files))
	for _, f := range c.chunks.files {
		for i := range f.chunks {
			f.chunks[i].BlobLength = c.streamLength(f.chunks[i].BlobOffset)
		}
		c.idx.Chunks[f.ino] = f.chunks
	}
	for ino := range c.opaque {
		ent := c.entry(ino)
		if ent.Xattrs == nil {
			ent.Xattrs = make(map[string][]byte, 1)
		}
		ent.Xattrs[XattrOverlayOpaque] = []byte("y")
	}
	c.idx.Children = make(map[uint64][]Dirent, len(c.dirents))
	all := make([]Dirent, 0, len(c.paths)-1) // every name but the root's
	for dir, list := range c.dirents {
		if c.replaced.tombstones {
			if list = slices.DeleteFunc(list, isTombstone); len(list) == 0 {
				continue
			}
		}
		if !slices.IsSortedFunc(list, compareDirents) {
			slices.SortFunc(list, compareDirents)
		}
		for i := range list {
			list[i].Type = c.entry(list[i].Ino).Type // final once the TOC is read
		}
		// One exactly sized array for all listings, not one per directory.
		all = append(all, list...)
		c.idx.Children[dir] = all[len(all)-len(list) : len(all) : len(all)]
	}
	return c.idx, nil
}

func compareDirents(a, b Dirent) int { return strings.Compare(a.Name, b.Name) }

// timeCache remembers the last modtime parsed: most entries of a layer
// share theirs, and parsing one costs more than converting the rest.
type timeCache struct {
	s string
	t time.Time
}

func (tc *timeCache) parse(s string) (time.Time, error) {
	if s == tc.s && s != "" {
		return tc.t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, err
	}
	tc.s, tc.t = s, t.UTC()
	return tc.t, nil
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
// expression, which costs a tenth of indexing a large layer. The loop is
// a table lookup without branches on the data: random hex digits defeat
// branch prediction.
func validateDigest(d digest.Digest) error {
	const prefix = "sha256:"
	s := string(d)
	if len(s) != len(prefix)+64 || s[:len(prefix)] != prefix {
		return d.Validate()
	}
	hex := true
	for i := len(prefix); i < len(s); i++ {
		hex = hex && lowerHex[s[i]]
	}
	if !hex {
		return d.Validate()
	}
	return nil
}

var lowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()
