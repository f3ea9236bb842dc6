package index

import "fmt"

// setRoot applies the root directory's own entry; a later one replaces
// the metadata of an earlier one.
func (b *treeBuilder) setRoot(h *header) error {
	if h.Type != TypeDir || h.Hardlink {
		return fmt.Errorf("the root entry is a %q, not a directory", h.TypeName)
	}
	return b.applyDirMeta(RootIno, h)
}

// addDir adds a directory entry, or applies its metadata to the directory
// already there (see treeBuilder).
func (b *treeBuilder) addDir(parent uint64, name, base string, h *header) error {
	opaque := false
	if old, ok := b.paths[name]; ok {
		if !b.whiteout[old] && b.entry(old).Type == TypeDir {
			delete(b.replaced.whiteoutOnly, old)
			return b.applyDirMeta(old, h)
		}
		// A whiteout, or a non-directory that replaced whatever lower
		// layers had here: the new directory shows nothing of theirs.
		b.unlinkIfPresent(parent, name, base)
		opaque = true
	}
	meta, err := entryMeta(h)
	if err != nil {
		return err
	}
	meta.Type = TypeDir
	ino, err := b.link(parent, name, base, b.newInode(meta))
	if opaque {
		b.opaque[ino] = true
	}
	return err
}

// applyDirMeta gives a directory the metadata of its entry, replacing what
// an earlier entry or the implicit defaults gave it.
func (b *treeBuilder) applyDirMeta(ino uint64, h *header) error {
	meta, err := entryMeta(h)
	if err != nil {
		return err
	}
	meta.Type, meta.Ino = TypeDir, ino
	*b.entry(ino) = meta
	return nil
}

// addWhiteout turns an OCI whiteout entry into its overlayfs form. Its
// own metadata and content mean nothing to overlayfs and are dropped.
func (b *treeBuilder) addWhiteout(dir, base string, h *header) error {
	if h.Type == TypeDir && !h.Hardlink {
		return fmt.Errorf("whiteout %q is a directory", base)
	}
	// Content of a whiteout (a regular file with Size > 0) is ignored,
	// chunks too.
	b.openFile(openFile{name: joinName(dir, base), size: h.Size, skip: true})
	target := ""
	if base != whiteoutOpaque {
		var err error
		if target, err = whiteoutTarget(base); err != nil {
			return err
		}
	}
	if b.hidesNothing(dir) {
		return nil
	}
	parent, err := b.ensureDir(dir, false)
	if err != nil {
		return err
	}
	if target == "" {
		b.makeOpaque(parent, dir)
		return nil
	}
	name := joinName(dir, target)
	if old, ok := b.paths[name]; ok {
		switch {
		case b.whiteout[old] || b.entry(old).Type != TypeDir:
			return nil // a repeat, or an entry of this layer, which stays
		case !b.replaced.whiteoutOnly[old]:
			b.makeOpaque(old, name) // a directory of this layer stays, lower content goes
			return nil
		}
		// A directory made only to hold whiteouts: the unpack removes it.
		b.unlinkIfPresent(parent, name, target)
	}
	ino := b.newInode(Entry{Type: TypeChar})
	b.whiteout[ino] = true
	_, err = b.link(parent, name, target, ino)
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
func (b *treeBuilder) addHardlink(parent uint64, name, base string, h *header) error {
	target, err := cleanName(h.LinkName)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", h.LinkName, err)
	}
	b.unlinkIfPresent(parent, name, base)
	ino, ok := b.paths[target]
	if !ok {
		return fmt.Errorf("hardlink to %q, which is not an earlier entry of the layer", h.LinkName)
	}
	ent := b.entry(ino)
	switch {
	case b.whiteout[ino]:
		return fmt.Errorf("hardlink to %q, which is a whiteout", h.LinkName)
	case ent.Type == TypeDir:
		return fmt.Errorf("hardlink to %q, which is a directory", h.LinkName)
	}
	if _, err := b.link(parent, name, base, ino); err != nil {
		return err
	}
	ent.Nlink = max(ent.Nlink, 1) + 1
	return nil
}

// addChunk appends a chunk of the open regular file: ch.FileOffset must
// be where the previous chunk ended, and ch.Length, 0 meaning "to the end
// of the file", must not run past the file's end. The chunk is dropped
// when the open file is not part of the tree (a whiteout's content).
func (b *treeBuilder) addChunk(ch Chunk) error {
	f := b.file
	if f == nil {
		return fmt.Errorf("chunk at file offset %d does not follow a regular file", ch.FileOffset)
	}
	if f.skip {
		return nil
	}
	if ch.FileOffset != f.next {
		return fmt.Errorf("chunk at file offset %d, expected %d (chunks must be in order without gaps or overlaps)",
			ch.FileOffset, f.next)
	}
	remaining := f.size - f.next
	if remaining <= 0 {
		return fmt.Errorf("chunk at file offset %d is past the end of the file (size %d)", ch.FileOffset, f.size)
	}
	if ch.Length == 0 {
		ch.Length = remaining
	}
	if ch.Length > remaining {
		return fmt.Errorf("chunk [%d, +%d) runs past the end of the file (size %d)", ch.FileOffset, ch.Length, f.size)
	}
	if ch.Length > MaxChunkLength {
		return fmt.Errorf("chunk of %d bytes, more than %d", ch.Length, MaxChunkLength)
	}
	if b.nchunks++; b.nchunks > b.lim.chunks {
		return fmt.Errorf("more than %d chunks in the layer", b.lim.chunks)
	}
	b.chunks.add(f, ch)
	f.next += ch.Length
	return nil
}

// closeFile checks that the open file's chunks covered all of it and
// files them under its inode.
func (b *treeBuilder) closeFile() error {
	f := b.file
	b.file = nil
	if f == nil || f.skip {
		return nil
	}
	if f.next != f.size {
		return Invalidf("entry %q: chunks cover %d of its %d bytes", f.name, f.next, f.size)
	}
	b.chunks.close(f)
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
