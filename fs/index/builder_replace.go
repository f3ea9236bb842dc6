package index

// Replacements: a later TOC entry of a name replaces the earlier one, and
// whiteouts meet entries of the same layer (the rules are on
// tocConverter). They are rare, so they cost the common path nothing but
// a few checks of empty maps: a replaced name's directory listing entry
// becomes a tombstone (Ino 0) that finish drops, and inodes left without
// a name are marked dead and dropped by compact.

// replaced is the converter's bookkeeping for replacements.
type replaced struct {
	// whiteoutOnly holds the directories made implicitly as parents of
	// whiteouts or opaque markers and of nothing else. A sequential
	// unpack creates no such directory (it only removes lower files), so
	// a later whiteout of one removes it rather than making it opaque.
	whiteoutOnly map[uint64]bool
	// names maps a name to its position in its directory's listing, for
	// the directories where a name was replaced; built on first use.
	names      map[uint64]map[string]int
	dead       map[uint64]bool // inodes no name refers to any more
	tombstones bool            // some listing holds a tombstone
}

func isTombstone(d Dirent) bool { return d.Ino == 0 }

// linked records that base was appended to parent's listing at pos.
func (r *replaced) linked(parent uint64, base string, pos int) {
	if r.names != nil {
		if m := r.names[parent]; m != nil {
			m[base] = pos
		}
	}
}

func (r *replaced) markWhiteoutOnly(ino uint64) {
	if r.whiteoutOnly == nil {
		r.whiteoutOnly = make(map[uint64]bool)
	}
	r.whiteoutOnly[ino] = true
}

// markReal records that a real entry lies in the directory name, which
// makes it and its parents real directories of the layer.
func (r *replaced) markReal(b *treeBuilder, name string) {
	for len(r.whiteoutOnly) > 0 {
		ino := b.paths[name]
		if !r.whiteoutOnly[ino] {
			return
		}
		delete(r.whiteoutOnly, ino)
		name, _ = splitName(name)
	}
}

// unlinkIfPresent removes the entry named name (base in directory
// parent), if there is one, as a sequential unpack removes what is at a
// path before it writes an entry there.
func (b *treeBuilder) unlinkIfPresent(parent uint64, name, base string) {
	if _, ok := b.paths[name]; ok {
		b.unlinkAt(parent, b.direntPos(parent, base), name)
	}
}

// direntPos finds the live entry base in parent's listing.
func (b *treeBuilder) direntPos(parent uint64, base string) int {
	list := b.dirents[parent]
	// Usually the entry just added: ".wh.x" and "x" come together.
	if n := len(list); n > 0 && list[n-1].Name == base && list[n-1].Ino != 0 {
		return n - 1
	}
	r := &b.replaced
	m := r.names[parent]
	if m == nil {
		m = make(map[string]int, len(list))
		for i, d := range list {
			if d.Ino != 0 {
				m[d.Name] = i
			}
		}
		if r.names == nil {
			r.names = make(map[uint64]map[string]int)
		}
		r.names[parent] = m
	}
	return m[base]
}

// unlinkAt removes the name at pos in parent's listing, whose path is
// name, and drops its inode unless another name holds it.
func (b *treeBuilder) unlinkAt(parent uint64, pos int, name string) {
	list := b.dirents[parent]
	ino := list[pos].Ino
	list[pos].Ino = 0
	b.replaced.tombstones = true
	if m := b.replaced.names[parent]; m != nil {
		delete(m, list[pos].Name)
	}
	delete(b.paths, name)
	b.drop(ino, name)
}

// drop forgets one name of ino, whose path was name: a directory goes
// with everything under it, another inode when it has no name left.
func (b *treeBuilder) drop(ino uint64, name string) {
	ent := b.entry(ino)
	if ent.Type == TypeDir {
		for _, d := range b.dirents[ino] {
			if d.Ino != 0 {
				child := joinName(name, d.Name)
				delete(b.paths, child)
				b.drop(d.Ino, child)
			}
		}
		delete(b.dirents, ino)
		delete(b.replaced.names, ino)
		delete(b.replaced.whiteoutOnly, ino)
		delete(b.opaque, ino)
	} else if ent.Nlink > 1 {
		if ent.Nlink--; ent.Nlink == 1 {
			ent.Nlink = 0 // as for a name that never had a hardlink
		}
		return
	}
	r := &b.replaced
	if r.dead == nil {
		r.dead = make(map[uint64]bool)
	}
	r.dead[ino] = true
	b.lastDir.ino = 0 // it may have been the cached directory
}

// dirOverWhiteout replaces the whiteout at name by an implicit directory
// for a real entry under it: the unpack removed the lower name and
// creates a directory that holds only what this layer puts there.
func (b *treeBuilder) dirOverWhiteout(name string) (uint64, error) {
	dir, base := splitName(name)
	parent, err := b.findDir(dir, true)
	if err != nil {
		return 0, err
	}
	b.unlinkIfPresent(parent, name, base)
	// Nlink 1 marks it made anew (see Entry.Nlink, ImplicitDirs).
	ino, err := b.link(parent, name, base, b.newInode(Entry{Type: TypeDir, Mode: 0o755, Nlink: 1}))
	b.opaque[ino] = true
	return ino, err
}

// hidesNothing reports whether a whiteout in directory dir would hide
// nothing: dir, or a directory above it, is a whiteout or opaque in this
// layer, so no lower layer shows there. A sequential unpack has removed
// everything of theirs there already, and a whiteout in an opaque
// directory would show in an overlayfs listing.
func (b *treeBuilder) hidesNothing(dir string) bool {
	for {
		if ino, ok := b.paths[dir]; ok {
			switch {
			case b.whiteout[ino] || b.opaque[ino]:
				return true
			case b.entry(ino).Type != TypeDir:
				return false // ensureDir refuses it
			}
		}
		if dir == "" {
			return false
		}
		dir, _ = splitName(dir)
	}
}

// makeOpaque makes the directory ino at name hide the lower layers'
// content, and removes the whiteouts under it, which now hide nothing.
func (b *treeBuilder) makeOpaque(ino uint64, name string) {
	if b.opaque[ino] {
		return
	}
	b.wipe(ino, name)
	b.opaque[ino] = true
}

// wipe removes the whiteouts under the directory dir at name, and the
// directories made only to hold them, as a sequential unpack's whiteout
// or opaque marker removes everything under a directory that this layer
// did not write. Opaque directories below are wiped already.
func (b *treeBuilder) wipe(dir uint64, name string) {
	list := b.dirents[dir]
	for i, d := range list {
		switch {
		case d.Ino == 0:
		case b.whiteout[d.Ino] || b.replaced.whiteoutOnly[d.Ino]:
			b.unlinkAt(dir, i, joinName(name, d.Name))
		case b.entry(d.Ino).Type == TypeDir && !b.opaque[d.Ino]:
			b.wipe(d.Ino, joinName(name, d.Name))
		}
	}
}

// compact drops the dead inodes and renumbers the others densely, in
// their order, in every structure finish reads.
func (b *treeBuilder) compact() {
	dead := b.replaced.dead
	if len(dead) == 0 {
		return
	}
	renum := make([]uint64, len(b.idx.Entries)) // by old index; 0 for the dead
	kept := b.idx.Entries[:0]
	for i := range b.idx.Entries {
		if dead[uint64(i)+RootIno] {
			continue
		}
		e := b.idx.Entries[i]
		e.Ino = uint64(len(kept)) + RootIno
		renum[i] = e.Ino
		kept = append(kept, e)
	}
	clear(b.idx.Entries[len(kept):])
	b.idx.Entries = kept
	newIno := func(ino uint64) uint64 { return renum[ino-RootIno] }

	dirents := make(map[uint64][]Dirent, len(b.dirents))
	for dir, list := range b.dirents {
		for i := range list {
			if list[i].Ino != 0 {
				list[i].Ino = newIno(list[i].Ino)
			}
		}
		dirents[newIno(dir)] = list
	}
	b.dirents = dirents
	files := b.chunks.files[:0]
	for _, f := range b.chunks.files {
		if !dead[f.ino] {
			f.ino = newIno(f.ino)
			files = append(files, f)
		}
	}
	b.chunks.files = files
	opaque := make(map[uint64]bool, len(b.opaque))
	for ino := range b.opaque {
		opaque[newIno(ino)] = true
	}
	b.opaque = opaque
}
