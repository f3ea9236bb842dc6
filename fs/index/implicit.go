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
// when the layer has no "./" entry. Opaque ones are left out: below an
// opaque directory nothing of the lower layers shows, and a sequential
// unpack made it anew. A directory with an entry never has a zero time
// (applyDirMeta), so the time tells them apart, in indexes read from a
// registry too. Paths are in order; more than MaxImplicit sets more.
func ImplicitDirs(idx *Index) (dirs []string, more bool) {
	implicit := func(ino uint64) bool {
		if ino < RootIno || ino-RootIno >= uint64(len(idx.Entries)) {
			return false
		}
		e := &idx.Entries[ino-RootIno]
		_, opaque := e.Xattrs[XattrOverlayOpaque]
		return e.Type == TypeDir && e.ModTime.IsZero() && !opaque
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
