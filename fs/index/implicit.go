package index

import (
	"path"
	"slices"
)

// MaxImplicit bounds Info.Implicit: a hostile layer could hold millions
// of directories without entries, and a mount resolves each.
const MaxImplicit = 4096

// ImplicitDirs lists the directories of idx that no entry of the layer
// describes: made as parents of its entries, with mode 0755, owner 0:0
// and a zero time (the tree builder's rules), the root included (as ".")
// when the layer has no "./" entry; opaque ones too (an opaque marker
// empties a directory an unpack keeps). A directory with an entry never
// has a zero time (entryMeta), so the time tells them apart, in indexes
// read from a registry too. Those with Nlink 1 were made anew in place of
// a whiteout of the layer (IsRecreated). Paths are in order; more than
// MaxImplicit sets more.
func ImplicitDirs(idx *Index) (dirs []string, more bool) {
	implicit := func(ino uint64) bool {
		if ino < RootIno || ino-RootIno >= uint64(len(idx.Entries)) {
			return false
		}
		return IsImplicit(&idx.Entries[ino-RootIno])
	}
	any := false
	for i := range idx.Entries {
		if implicit(uint64(i) + RootIno) {
			any = true
			break
		}
	}
	if !any {
		return nil, false
	}
	// Walk the directories from the root for their paths; the listings
	// of a valid index form a tree, and seen guards against one that
	// does not.
	type dir struct {
		ino  uint64
		path string
	}
	queue := []dir{{RootIno, "."}}
	seen := map[uint64]bool{RootIno: true}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if implicit(d.ino) {
			if len(dirs) == MaxImplicit {
				more = true
				break
			}
			dirs = append(dirs, d.path)
		}
		for _, k := range idx.Children[d.ino] {
			if k.Type != TypeDir || seen[k.Ino] {
				continue
			}
			seen[k.Ino] = true
			p := k.Name
			if d.path != "." {
				p = path.Join(d.path, k.Name)
			}
			queue = append(queue, dir{k.Ino, p})
		}
	}
	slices.Sort(dirs)
	return dirs, more
}

// IsImplicit says whether e is a directory the layer holds without an
// entry of its own (see ImplicitDirs).
func IsImplicit(e *Entry) bool { return e.Type == TypeDir && e.ModTime.IsZero() }

// IsRecreated says whether the implicit directory e was made anew in place
// of a whiteout of its layer: an unpack's mkdir, nothing of the lower
// layers' directory of that name.
func IsRecreated(e *Entry) bool { return IsImplicit(e) && e.Nlink == 1 }
