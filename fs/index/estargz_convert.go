package index

import (
	"fmt"
	"slices"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// ctxCheckEvery is how many TOC entries are converted between checks of
// the context: often enough to stop a 4M-entry TOC promptly, rarely
// enough to cost nothing.
const ctxCheckEvery = 4096

// tocConverter builds an Index from the entries of an eStargz TOC (or a
// zstd:chunked one: the same schema), given one at a time in TOC order as
// the decoder reads them. The tree is the shared builder's (treeBuilder
// states the rules); what is the TOC's own:
//
//   - A "reg" entry with Size > 0 is the file's first chunk; "chunk"
//     entries for the same name follow it. Chunks must be in order, cover
//     [0, Size) exactly and each carry a chunkDigest (a file of one chunk
//     may carry its content digest instead). A chunk's compressed
//     range runs from its Offset to the next larger stream start (any data
//     entry's Offset, or the TOC's offset); chunks sharing a stream differ
//     in InnerOffset.
//   - estargz's bookkeeping files at the root (the prefetch landmarks and
//     stargz.index.json) are left out of the tree; the prefetch landmark's
//     offset is the Index's PrefetchEnd.
//   - Sizes and offsets may not be negative, and data offsets must lie
//     before the TOC.
type tocConverter struct {
	b      *treeBuilder
	enc    Encoding // of every chunk: the format's
	lim    limits
	tocOff int64
	bounds []int64 // offsets of data entries: stream starts
	raw    int     // TOC entries read
	h      header  // the entry being added, reused
	mtime  timeCache
}

// newTOCConverter starts the Index of a TOC whose data ends at offset
// tocOff (where the TOC, or its frame, starts); addEntry applies each
// entry and finish completes the Index. sizeHint is how many entries to
// make room for at once. The format says how chunks are compressed:
// FormatZstdChunked's are zstd frames, FormatEStargz's gzip streams.
func newTOCConverter(format Format, tocOff int64, lim limits, sizeHint int) *tocConverter {
	enc := EncodingGzip
	if format == FormatZstdChunked {
		enc = EncodingZstd
	}
	return &tocConverter{b: newTreeBuilder(format, lim, sizeHint), enc: enc, lim: lim, tocOff: tocOff}
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
	if e.Type == "chunk" {
		return c.addChunkEntry(e)
	}
	if err := c.b.closeFile(); err != nil {
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
	if name == estargz.PrefetchLandmark && e.Type == "reg" {
		c.b.idx.PrefetchEnd = e.Offset
	}
	if isBookkeeping(name, e.Type) {
		return c.b.skipFile(name, e.Size)
	}
	if err := c.header(name, e); err != nil {
		return err
	}
	if err := c.b.add(name, &c.h); err != nil {
		return err
	}
	if e.Type == "reg" && e.Size > 0 {
		return c.addChunk(e)
	}
	return nil
}

// header converts a TOC entry into the builder's header. The mtime is
// parsed only for entries whose metadata is used: a whiteout's and a
// hardlink's are not.
func (c *tocConverter) header(name string, e *tocEntry) error {
	typ, _ := nodeType(e.Type)
	c.h = header{
		Type:     typ,
		Hardlink: e.Type == "hardlink",
		TypeName: e.Type,
		Size:     e.Size,
		Mode:     e.Mode,
		UID:      e.UID,
		GID:      e.GID,
		LinkName: e.LinkName,
		DevMajor: e.DevMajor,
		DevMinor: e.DevMinor,
		Xattrs:   e.Xattrs,
	}
	if e.ModTime3339 == "" || c.h.Hardlink || typ == 0 || isWhiteoutName(name) {
		return nil
	}
	t, err := c.mtime.parse(e.ModTime3339)
	if err != nil {
		return fmt.Errorf("modtime: %w", err)
	}
	c.h.ModTime = t
	return nil
}

// addChunkEntry handles a "chunk" entry: a further piece of the regular
// file whose "reg" entry came just before.
func (c *tocConverter) addChunkEntry(e *tocEntry) error {
	f := c.b.file
	if f == nil {
		return Invalidf("chunk entry %q does not follow a regular file", e.Name)
	}
	name, err := cleanName(e.Name)
	if err != nil || name != f.name {
		return Invalidf("chunk entry %q does not follow a regular file of that name (last was %q)", e.Name, f.name)
	}
	if f.skip {
		return nil
	}
	if err := c.addChunk(e); err != nil {
		return Invalidf("entry %q: %v", e.Name, err)
	}
	return nil
}

// addChunk adds the chunk an entry ("reg" or "chunk") describes to the
// open file. BlobLength needs every stream start in the TOC: finish sets
// it.
func (c *tocConverter) addChunk(e *tocEntry) error {
	cd := e.ChunkDigest
	if cd == "" && e.Type == "reg" && (e.ChunkSize == 0 || e.ChunkSize == e.Size) {
		// A file stored as one chunk: its content digest is the chunk's.
		// containers/storage's zstd:chunked writer gives a file that it
		// does not cut into chunks only that "digest", no chunkDigest.
		cd = e.Digest
	}
	d, err := parseChunkDigest(cd)
	if err != nil {
		return err
	}
	return c.b.addChunk(Chunk{
		FileOffset: e.ChunkOffset,
		Length:     e.ChunkSize,
		BlobOffset: e.Offset,
		Inner:      e.InnerOffset,
		Encoding:   c.enc,
		Digest:     d,
	})
}

// streamLength returns the compressed length of the stream starting at
// off, which checkNumbers has checked lies before the TOC. bounds must be
// sorted and end with the TOC offset.
func (c *tocConverter) streamLength(off int64) int64 {
	i, _ := slices.BinarySearch(c.bounds, off+1)
	return c.bounds[i] - off
}

// finish completes the Index once every entry has been added.
func (c *tocConverter) finish() (*Index, error) {
	if err := c.b.closeFile(); err != nil {
		return nil, err
	}
	c.bounds = append(c.bounds, c.tocOff)
	slices.Sort(c.bounds)
	c.bounds = slices.Compact(c.bounds)
	for _, f := range c.b.chunks.files {
		for i := range f.chunks {
			f.chunks[i].BlobLength = c.streamLength(f.chunks[i].BlobOffset)
		}
	}
	return c.b.finish(), nil
}

// isBookkeeping reports whether a TOC entry is estargz's own and not part
// of the layer's file tree: the prefetch landmarks that estargz.Build
// adds at the root, and the TOC itself when a writer lists it.
func isBookkeeping(name, typ string) bool {
	if typ != "reg" {
		return false
	}
	switch name {
	case estargz.PrefetchLandmark, estargz.NoPrefetchLandmark, estargz.TOCTarName:
		return true
	}
	return false
}

// checkNumbers refuses negative sizes and offsets anywhere in an entry,
// and data offsets that do not lie before the TOC.
func checkNumbers(e *tocEntry, tocOff int64) error {
	if e.Size < 0 || e.Offset < 0 || e.InnerOffset < 0 || e.ChunkOffset < 0 || e.ChunkSize < 0 {
		return fmt.Errorf("negative size or offset (size %d, offset %d, innerOffset %d, chunkOffset %d, chunkSize %d)",
			e.Size, e.Offset, e.InnerOffset, e.ChunkOffset, e.ChunkSize)
	}
	if e.Offset > tocOff || (carriesData(e) && e.Offset == tocOff) {
		return fmt.Errorf("offset %d is not before the TOC at %d", e.Offset, tocOff)
	}
	return nil
}

// carriesData reports whether an entry points at file bytes in the blob.
func carriesData(e *tocEntry) bool {
	return e.Type == "chunk" || (e.Type == "reg" && e.Size > 0)
}

// nodeType maps the TOC types that make an inode of their own.
func nodeType(typ string) (Type, bool) {
	switch typ {
	case "dir":
		return TypeDir, true
	case "reg":
		return TypeReg, true
	case "symlink":
		return TypeSymlink, true
	case "char":
		return TypeChar, true
	case "block":
		return TypeBlock, true
	case "fifo":
		return TypeFifo, true
	}
	return 0, false
}

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
