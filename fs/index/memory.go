package index

import (
	"cmp"
	"slices"
	"sort"
	"sync"
)

// Memory is a read-only view of an Index held in memory, with the same
// methods as the on-disk Layer view. A layer mounts from it while its
// index is being saved, so the first mount does not wait for the write;
// afterwards the mount moves to the on-disk view and this one is dropped.
type Memory struct {
	idx  *Index
	info Info

	blobOnce sync.Once
	byBlob   []BlobChunk
}

// NewMemory returns the in-memory view of idx, which must be valid
// (Validate) and not be changed afterwards.
func NewMemory(idx *Index, blobSize int64) *Memory {
	info := Info{Version: indexVersion, Format: idx.Format, BlobSize: blobSize, Entries: len(idx.Entries), PrefetchEnd: idx.PrefetchEnd,
		Unpacked: idx.Unpacked, Packed: idx.Packed, TOCDigest: idx.TOCDigest, Source: idx.Source, Plain: true}
	for _, cs := range idx.Chunks {
		info.Chunks += len(cs)
	}
	info.Checkpoints = len(idx.Checkpoints)
	for i := range idx.Entries {
		info.count(&idx.Entries[i])
	}
	info.Implicit, info.ImplicitMore = ImplicitDirs(idx)
	return &Memory{idx: idx, info: info}
}

// Info describes the index.
func (m *Memory) Info() Info { return m.info }

// Entry returns the entry with inode number ino.
func (m *Memory) Entry(ino uint64) (Entry, error) {
	if ino < RootIno || ino-RootIno >= uint64(len(m.idx.Entries)) {
		return Entry{}, Invalidf("inode %d: %v", ino, errNotInBucket)
	}
	return m.idx.Entries[ino-RootIno], nil
}

// Lookup returns the entry named name in directory parent.
func (m *Memory) Lookup(parent uint64, name string) (Entry, bool, error) {
	kids := m.idx.Children[parent]
	i := sort.Search(len(kids), func(i int) bool { return kids[i].Name >= name })
	if i == len(kids) || kids[i].Name != name {
		return Entry{}, false, nil
	}
	e, err := m.Entry(kids[i].Ino)
	return e, err == nil, err
}

// ReadDir returns the names in directory ino, sorted, with their types.
func (m *Memory) ReadDir(ino uint64) ([]Dirent, error) {
	return slices.Clone(m.idx.Children[ino]), nil
}

// Chunks returns the chunks of file ino that overlap [off, off+n).
func (m *Memory) Chunks(ino uint64, off, n int64) ([]Chunk, error) {
	cs := m.idx.Chunks[ino]
	i := sort.Search(len(cs), func(i int) bool { return cs[i].End() > off })
	var out []Chunk
	for ; i < len(cs) && cs[i].FileOffset < off+n; i++ {
		out = append(out, cs[i])
	}
	return out, nil
}

// ChunksInBlob returns the chunks whose streams start in [from, to), in
// blob order, at most max of them.
func (m *Memory) ChunksInBlob(from, to int64, max int) ([]BlobChunk, error) {
	m.blobOnce.Do(func() {
		for ino, cs := range m.idx.Chunks {
			for _, c := range cs {
				m.byBlob = append(m.byBlob, BlobChunk{Ino: ino, Chunk: c})
			}
		}
		slices.SortFunc(m.byBlob, func(a, b BlobChunk) int {
			return cmp.Or(cmp.Compare(a.BlobOffset, b.BlobOffset), cmp.Compare(a.Ino, b.Ino), cmp.Compare(a.FileOffset, b.FileOffset))
		})
	})
	i := sort.Search(len(m.byBlob), func(i int) bool { return m.byBlob[i].BlobOffset >= from })
	var out []BlobChunk
	for ; i < len(m.byBlob) && m.byBlob[i].BlobOffset < to && len(out) < max; i++ {
		out = append(out, m.byBlob[i])
	}
	return out, nil
}

// Checkpoint returns the checkpoint of a gzip layer at byte in.
func (m *Memory) Checkpoint(in int64) (Checkpoint, error) {
	i, found := slices.BinarySearchFunc(m.idx.Checkpoints, in, func(cp Checkpoint, in int64) int { return cmp.Compare(cp.In, in) })
	if !found {
		return Checkpoint{}, Invalidf("no checkpoint at byte %d: %v", in, errNotInBucket)
	}
	return m.idx.Checkpoints[i], nil
}
