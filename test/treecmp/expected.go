package treecmp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/stratafs/strata/test/fixture"
)

// Expected computes, from the fixture specs alone, the tree that applying
// the layers bottom-first with OCI semantics must produce: whiteouts delete
// a path and everything under it, an opaque marker deletes what lower
// layers put in its directory, a non-directory replaces whatever was at its
// path, a directory over a directory only updates attributes, and a
// hardlink shares its target's inode (attributes and content). It is a
// second, independent statement of the semantics that ReferenceUnpack and
// Strata implement, so a mismatch with either points at a real bug.
//
// Every parent must be created by an earlier entry; a missing parent is an
// error because its attributes would be undefined.
func Expected(layers []fixture.LayerSpec) ([]Record, error) {
	m := &model{files: map[string]fixture.File{}, group: map[string]int{}}
	for i, spec := range layers {
		if err := m.apply(spec); err != nil {
			return nil, fmt.Errorf("treecmp: layer %d: %w", i, err)
		}
	}
	return m.records()
}

type model struct {
	files  map[string]fixture.File // resolved: hardlinks hold their target's File
	group  map[string]int          // hardlink group id by path
	nextID int
}

func (m *model) apply(spec fixture.LayerSpec) error {
	added := map[string]bool{} // paths this layer wrote: opaque spares them
	for _, f := range spec {
		p := path.Clean(f.Path)
		if p != "." {
			if parent, ok := m.files[path.Dir(p)]; !ok || parent.Type != fixture.TypeDir {
				return fmt.Errorf("%s: parent directory not created by an earlier entry", p)
			}
		}
		switch f.Type {
		case fixture.TypeWhiteout:
			m.remove(p, true, nil)
			continue
		case fixture.TypeOpaque:
			m.remove(p, false, added)
			continue
		case fixture.TypeDir:
			if old, ok := m.files[p]; ok && old.Type == fixture.TypeDir {
				m.files[p], added[p] = f, true
				continue
			}
		}
		m.remove(p, true, nil)
		if f.Type == fixture.TypeHardlink {
			if err := m.link(p, path.Clean(f.Link)); err != nil {
				return err
			}
		} else {
			m.files[p] = f
		}
		added[p] = true
	}
	return nil
}

// remove deletes p's descendants (not those in keep) and, if self, p.
func (m *model) remove(p string, self bool, keep map[string]bool) {
	prefix := p + "/"
	if p == "." {
		prefix = ""
	}
	for q := range m.files {
		if (self && q == p) || (strings.HasPrefix(q, prefix) && q != p && !keep[q]) {
			delete(m.files, q)
			delete(m.group, q)
		}
	}
}

func (m *model) link(p, target string) error {
	t, ok := m.files[target]
	if !ok || t.Type == fixture.TypeDir {
		return fmt.Errorf("%s: hardlink to missing or directory %q", p, target)
	}
	id, ok := m.group[target]
	if !ok {
		m.nextID++
		id = m.nextID
		m.group[target] = id
	}
	m.files[p], m.group[p] = t, id
	return nil
}

func (m *model) records() ([]Record, error) {
	members := map[int][]string{}
	for p, id := range m.group {
		members[id] = append(members[id], p)
	}
	recs := make([]Record, 0, len(m.files))
	for p, f := range m.files {
		r, err := fileRecord(p, f)
		if err != nil {
			return nil, err
		}
		if g := members[m.group[p]]; m.group[p] != 0 && len(g) > 1 {
			r.Hardlinks = append([]string(nil), g...)
			sort.Strings(r.Hardlinks)
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Path < recs[j].Path })
	return recs, nil
}

var fixtureTypes = map[fixture.Type]string{fixture.TypeReg: "reg", fixture.TypeDir: "dir",
	fixture.TypeSymlink: "symlink", fixture.TypeChar: "char", fixture.TypeBlock: "block", fixture.TypeFifo: "fifo"}

func fileRecord(p string, f fixture.File) (Record, error) {
	mtime := f.ModTime
	if mtime.IsZero() {
		mtime = fixture.DefaultModTime
	}
	r := Record{Path: p, Type: fixtureTypes[f.Type], Mode: uint32(f.Mode) & 0o7777,
		UID: uint32(f.UID), GID: uint32(f.GID), MTime: mtime.UnixNano()}
	for _, k := range sortedNames(f.Xattrs) {
		r.Xattrs = append(r.Xattrs, Xattr{Name: k, Value: f.Xattrs[k]})
	}
	switch f.Type {
	case fixture.TypeReg:
		h := sha256.New()
		n, err := io.Copy(h, f.Reader())
		if err != nil {
			return Record{}, fmt.Errorf("%s: content: %w", p, err)
		}
		r.Size, r.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	case fixture.TypeSymlink:
		r.Size, r.Link = int64(len(f.Link)), f.Link
		r.Mode = 0o777 // whatever the archive's header says
	case fixture.TypeChar, fixture.TypeBlock:
		r.RdevMajor, r.RdevMinor = uint32(f.DevMajor), uint32(f.DevMinor)
	}
	return r, nil
}

func sortedNames(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
