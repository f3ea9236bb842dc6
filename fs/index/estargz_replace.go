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
func (r *replaced) markReal(c *tocConverter, name string) {
	for len(r.whiteoutOnly) > 0 {
		ino := c.paths[name]
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
func (c *tocConverter) unlinkIfPresent(parent uint64, name, base string) {
	if _, ok := c.paths[name]; ok {
		c.unlinkAt(parent, c.direntPos(parent, base), name)
	}
}

// direntPos finds the live entry base in parent's listing.
func (c *tocConverter) direntPos(parent uint64, base string) int {
	list := c.dirents[parent]
	// Usually the entry just added: ".wh.x" and "x" come together.
	if n := len(list); n > 0 && list[n-1].Name == base && list[n-1].Ino != 0 {
		return n - 1
	}
	r := &c.replaced
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
func (c *tocConverter) unlinkAt(parent uint64, pos int, name string) {
	list := c.dirents[parent]
	ino := list[pos].Ino
	list[pos].Ino = 0
	c.replaced.tombstones = true
	if m := c.replaced.names[parent]; m != nil {
		delete(m, list[pos].Name)
	}
	delete(c.paths, name)
	c.drop(ino, name)
}

// drop forgets one name of ino, whose path was name: a directory goes
// with everything under it, another inode when it has no name left.
func (c *tocConverter) drop(ino uint64, name string) {
	ent := c.entry(ino)
	if ent.Type == TypeDir {
		for _, d := range c.dirents[ino] {
			if d.Ino != 0 {
				child := joinName(name, d.Name)
				delete(c.paths, child)
				c.drop(d.Ino, child)
			}
		}
		delete(c.dirents, ino)
		delete(c.replaced.names, ino)
		delete(c.replaced.whiteoutOnly, ino)
		delete(c.opaque, ino)
	} else if ent.Nlink > 1 {
		if ent.Nlink--; ent.Nlink == 1 {
			ent.Nlink = 0 // as for a name that never had a hardlink
		}
		return
	}
	r := &c.replaced
	if r.dead == nil {
		r.dead = make(map[uint64]bool)
	}
	r.dead[ino] = true
	c.lastDir.ino = 0 // it may have been the cached directory
}

// dirOverWhiteout replaces the whiteout at name by an implicit directory
// for a real entry under it: the unpack removed the lower name and
// creates a directory that holds only what this layer puts there.
func (c *tocConverter) dirOverWhiteout(name string) (uint64, error) {
	dir, base := splitName(name)
	parent, err := c.findDir(dir, true)
	if err != nil {
		return 0, err
	}
	c.unlinkIfPresent(parent, name, base)
	ino, err := c.link(parent, name, base, c.newInode(Entry{Type: TypeDir, Mode: 0o755}))
	c.opaque[ino] = true
	return ino, err
}

// hidesNothing reports whether a whiteout in directory dir would hide
// nothing: dir, or a directory above it, is a whiteout or opaque in this
// layer, so no lower layer shows there. A sequential unpack has removed
// everything of theirs there already, and a whiteout in an opaque
// directory would show in an overlayfs listing.
func (c *tocConverter) hidesNothing(dir string) bool {
	for {
		if ino, ok := c.paths[dir]; ok {
			switch {
			case c.whiteout[ino] || c.opaque[ino]:
				return true
			case c.entry(ino).Type != TypeDir:
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
func (c *tocConverter) makeOpaque(ino uint64, name string) {
	if c.opaque[ino] {
		return
	}
	c.wipe(ino, name)
	c.opaque[ino] = true
}

// wipe removes the whiteouts under the directory dir at name, and the
// directories made only to hold them, as a sequential unpack's whiteout
// or opaque marker removes everything under a directory that this layer
// did not write. Opaque directories below are wiped already.
func (c *tocConverter) wipe(dir uint64, name string) {
	list := c.dirents[dir]
	for i, d := range list {
		switch {
		case d.Ino == 0:
		case c.whiteout[d.Ino] || c.replaced.whiteoutOnly[d.Ino]:
			c.unlinkAt(dir, i, joinName(name, d.Name))
		case c.entry(d.Ino).Type == TypeDir && !c.opaque[d.Ino]:
			c.wipe(d.Ino, joinName(name, d.Name))
		}
	}
}

// compact drops the dead inodes and renumbers the others densely, in
// their order, in every structure finish reads.
func (c *tocConverter) compact() {
	dead := c.replaced.dead
	if len(dead) == 0 {
		return
	}
	renum := make([]uint64, len(c.idx.Entries)) // by old index; 0 for the dead
	kept := c.idx.Entries[:0]
	for i := range c.idx.Entries {
		if dead[uint64(i)+RootIno] {
			continue
		}
		e := c.idx.Entries[i]
		e.Ino = uint64(len(kept)) + RootIno
		renum[i] = e.Ino
		kept = append(kept, e)
	}
	clear(c.idx.Entries[len(kept):])
	c.idx.Entries = kept
	newIno := func(ino uint64) uint64 { return renum[ino-RootIno] }

	dirents := make(map[uint64][]Dirent, len(c.dirents))
	for dir, list := range c.dirents {
		for i := range list {
			if list[i].Ino != 0 {
				list[i].Ino = newIno(list[i].Ino)
			}
		}
		dirents[newIno(dir)] = list
	}
	c.dirents = dirents
	files := c.chunks.files[:0]
	for _, f := range c.chunks.files {
		if !dead[f.ino] {
			f.ino = newIno(f.ino)
			files = append(files, f)
		}
	}
	c.chunks.files = files
	opaque := make(map[uint64]bool, len(c.opaque))
	for ino := range c.opaque {
		opaque[newIno(ino)] = true
	}
	c.opaque = opaque
}
