package index

import (
	"fmt"
)

// setRoot applies the root directory's own entry; a later one replaces
// the metadata of an earlier one.
func (c *tocConverter) setRoot(e *tocEntry) error {
	if e.Type != "dir" {
		return fmt.Errorf("the root entry is a %q, not a directory", e.Type)
	}
	return c.applyDirMeta(RootIno, e)
}

// addDir adds a directory entry, or applies its metadata to the directory
// already there (see tocConverter).
func (c *tocConverter) addDir(parent uint64, name, base string, e *tocEntry) error {
	opaque := false
	if old, ok := c.paths[name]; ok {
		if !c.whiteout[old] && c.entry(old).Type == TypeDir {
			delete(c.replaced.whiteoutOnly, old)
			return c.applyDirMeta(old, e)
		}
		// A whiteout, or a non-directory that replaced whatever lower
		// layers had here: the new directory shows nothing of theirs.
		c.unlinkIfPresent(parent, name, base)
		opaque = true
	}
	meta, err := c.entryMeta(e)
	if err != nil {
		return err
	}
	meta.Type = TypeDir
	ino, err := c.link(parent, name, base, c.newInode(meta))
	if opaque {
		c.opaque[ino] = true
	}
	return err
}

// applyDirMeta gives a directory the metadata of its entry, replacing what
// an earlier entry or the implicit defaults gave it.
func (c *tocConverter) applyDirMeta(ino uint64, e *tocEntry) error {
	meta, err := c.entryMeta(e)
	if err != nil {
		return err
	}
	meta.Type, meta.Ino = TypeDir, ino
	*c.entry(ino) = meta
	return nil
}

// addWhiteout turns an OCI whiteout entry into its overlayfs form. Its
// own metadata and content mean nothing to overlayfs and are dropped.
func (c *tocConverter) addWhiteout(dir, base string, e *tocEntry) error {
	if e.Type == "dir" {
		return fmt.Errorf("whiteout %q is a directory", base)
	}
	// Content of a whiteout ("reg" with Size > 0) is ignored, chunks too.
	c.openFile(openFile{name: joinName(dir, base), size: e.Size, skip: true})
	target := ""
	if base != whiteoutOpaque {
		var err error
		if target, err = whiteoutTarget(base); err != nil {
			return err
		}
	}
	if c.hidesNothing(dir) {
		return nil
	}
	parent, err := c.ensureDir(dir, false)
	if err != nil {
		return err
	}
	if target == "" {
		c.makeOpaque(parent, dir)
		return nil
	}
	name := joinName(dir, target)
	if old, ok := c.paths[name]; ok {
		switch {
		case c.whiteout[old] || c.entry(old).Type != TypeDir:
			return nil // a repeat, or an entry of this layer, which stays
		case !c.replaced.whiteoutOnly[old]:
			c.makeOpaque(old, name) // a directory of this layer stays, lower content goes
			return nil
		}
		// A directory made only to hold whiteouts: the unpack removes it.
		c.unlinkIfPresent(parent, name, target)
	}
	ino := c.newInode(Entry{Type: TypeChar})
	c.whiteout[ino] = true
	_, err = c.link(parent, name, target, ino)
	return err
}

func joinName(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// addHardlink adds another name for an earlier entry's inode. Like tar,
// the link's own metadata is ignored: a hardlink has no inode of its own.
// As on a sequential unpack, an earlier entry of the link's name goes
// first, so a link cannot name what it replaces.
func (c *tocConverter) addHardlink(parent uint64, name, base string, e *tocEntry) error {
	target, err := cleanName(e.LinkName)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", e.LinkName, err)
	}
	c.unlinkIfPresent(parent, name, base)
	ino, ok := c.paths[target]
	if !ok {
		return fmt.Errorf("hardlink to %q, which is not an earlier entry of the layer", e.LinkName)
	}
	ent := c.entry(ino)
	switch {
	case c.whiteout[ino]:
		return fmt.Errorf("hardlink to %q, which is a whiteout", e.LinkName)
	case ent.Type == TypeDir:
		return fmt.Errorf("hardlink to %q, which is a directory", e.LinkName)
	}
	if _, err := c.link(parent, name, base, ino); err != nil {
		return err
	}
	ent.Nlink = max(ent.Nlink, 1) + 1
	return nil
}

// addChunkEntry handles a "chunk" entry: a further piece of the regular
// file whose "reg" entry came just before.
func (c *tocConverter) addChunkEntry(e *tocEntry) error {
	f := c.file
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

// addChunk appends the chunk an entry ("reg" or "chunk") describes to the
// open file.
func (c *tocConverter) addChunk(e *tocEntry) error {
	f := c.file
	if e.ChunkOffset != f.next {
		return fmt.Errorf("chunk at file offset %d, expected %d (chunks must be in order without gaps or overlaps)",
			e.ChunkOffset, f.next)
	}
	remaining := f.size - f.next
	if remaining <= 0 {
		return fmt.Errorf("chunk at file offset %d is past the end of the file (size %d)", e.ChunkOffset, f.size)
	}
	length := e.ChunkSize
	if length == 0 { // zero means "to the end of the file"
		length = remaining
	}
	if length > remaining {
		return fmt.Errorf("chunk [%d, +%d) runs past the end of the file (size %d)", e.ChunkOffset, length, f.size)
	}
	if length > MaxChunkLength {
		return fmt.Errorf("chunk of %d bytes, more than %d", length, MaxChunkLength)
	}
	d, err := parseChunkDigest(e.ChunkDigest)
	if err != nil {
		return err
	}
	if c.nchunks++; c.nchunks > c.lim.chunks {
		return fmt.Errorf("more than %d chunks in the layer", c.lim.chunks)
	}
	// BlobLength needs every stream start in the TOC: finish sets it.
	c.chunks.add(f, Chunk{
		FileOffset: e.ChunkOffset,
		Length:     length,
		BlobOffset: e.Offset,
		Inner:      e.InnerOffset,
		Encoding:   EncodingGzip,
		Digest:     d,
	})
	f.next += length
	return nil
}

// closeFile checks that the open file's chunks covered all of it and
// files them under its inode.
func (c *tocConverter) closeFile() error {
	f := c.file
	c.file = nil
	if f == nil || f.skip {
		return nil
	}
	if f.next != f.size {
		return Invalidf("entry %q: chunks cover %d of its %d bytes", f.name, f.next, f.size)
	}
	c.chunks.close(f)
	return nil
}

// chunkStore holds the chunks of all files in a few large blocks rather
// than one small slice per file: a layer of many small files has as many
// chunks as files. A file's chunks are contiguous in one block.
type chunkStore struct {
	block []Chunk
	files []fileChunks
}

type fileChunks struct {
	ino    uint64
	chunks []Chunk
}

const chunkBlockLen = 4096

// add appends a chunk of the open file f.
func (s *chunkStore) add(f *openFile, ch Chunk) {
	if len(s.block) == cap(s.block) {
		// A new block, taking along the file's chunks so far.
		have := s.block[f.first:]
		s.block = append(make([]Chunk, 0, max(chunkBlockLen, 2*len(have))), have...)
		f.first = 0
	}
	s.block = append(s.block, ch)
}

// close files away the chunks of f, which has no more.
func (s *chunkStore) close(f *openFile) {
	if n := len(s.block); n > f.first {
		s.files = append(growDoubling(s.files), fileChunks{f.ino, s.block[f.first:n:n]})
	}
}
