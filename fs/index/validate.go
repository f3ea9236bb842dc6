package index

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Validate checks the invariants documented on Index, Entry and Chunk,
// so that an index read from any source (a format reader, the on-disk
// database, a pushed index artifact) can be served without further
// checks. Every failure wraps ErrInvalid and names the inode.
//
// It checks: inode numbers dense from RootIno; the root is a directory;
// entry fields consistent with their type and within the limits; every
// directory listing sorted, without duplicates, of valid names, naming
// existing inodes with their types; every inode reachable from the root,
// directories by exactly one name (no directory hardlinks, no cycles),
// other inodes by as many names as their Nlink; paths within MaxPathLen;
// the chunks of each regular file in order and covering [0, Size)
// exactly, each within MaxChunkLength, with a parseable digest, a known
// encoding and a blob range inside [0, blobSize).
func (idx *Index) Validate(blobSize int64) error {
	if idx == nil {
		return Invalidf("nil index")
	}
	if blobSize < 0 {
		return Invalidf("negative blob size %d", blobSize)
	}
	n := len(idx.Entries)
	if n == 0 || n > MaxEntries {
		return Invalidf("%d entries, want 1 to %d", n, MaxEntries)
	}
	if idx.Entries[0].Type != TypeDir {
		return Invalidf("root inode %d is a %v, not a directory", RootIno, idx.Entries[0].Type)
	}
	for i := range idx.Entries {
		if err := checkEntry(&idx.Entries[i], uint64(i)+RootIno); err != nil {
			return err
		}
	}
	if err := idx.validateTree(); err != nil {
		return err
	}
	if idx.PrefetchEnd < 0 || idx.PrefetchEnd > blobSize {
		return Invalidf("prefetch region end %d outside the blob's %d bytes", idx.PrefetchEnd, blobSize)
	}
	return idx.validateChunks(blobSize)
}

func checkEntry(e *Entry, ino uint64) error {
	if e.Ino != ino {
		return Invalidf("entry %d has inode number %d", ino, e.Ino)
	}
	if e.Type < TypeDir || e.Type > TypeFifo {
		return Invalidf("inode %d: unknown type %v", ino, e.Type)
	}
	if e.Mode&^0o7777 != 0 {
		return Invalidf("inode %d: mode %#o has bits outside 07777", ino, e.Mode)
	}
	switch {
	case e.Size < 0:
		return Invalidf("inode %d: negative size %d", ino, e.Size)
	case e.Type == TypeSymlink:
		if err := checkSymlinkTarget(e.LinkTarget); err != nil {
			return Invalidf("inode %d: %v", ino, err)
		}
		if e.Size != int64(len(e.LinkTarget)) {
			return Invalidf("inode %d: symlink size %d, target is %d bytes", ino, e.Size, len(e.LinkTarget))
		}
	case e.LinkTarget != "":
		return Invalidf("inode %d: a %v with a link target", ino, e.Type)
	case e.Size != 0 && e.Type != TypeReg:
		return Invalidf("inode %d: a %v with size %d", ino, e.Type, e.Size)
	}
	if (e.DevMajor != 0 || e.DevMinor != 0) && e.Type != TypeChar && e.Type != TypeBlock {
		return Invalidf("inode %d: a %v with device numbers", ino, e.Type)
	}
	if e.Type == TypeDir && e.Nlink != 0 && !IsRecreated(e) {
		return Invalidf("inode %d: a directory with Nlink %d", ino, e.Nlink)
	}
	if _, err := convertXattrs(e.Xattrs); err != nil {
		return Invalidf("inode %d: %v", ino, err)
	}
	return nil
}

// validateTree walks the directory tree breadth-first from the root.
func (idx *Index) validateTree() error {
	n := uint64(len(idx.Entries))
	names := make([]uint32, n)  // names seen per inode
	pathLen := make([]int32, n) // path length of each directory reached
	queue := []uint64{RootIno}  // directories to list
	for ino := range idx.Children {
		if ino < RootIno || ino-RootIno >= n || idx.Entries[ino-RootIno].Type != TypeDir {
			return Invalidf("children listed for inode %d, which is not a directory", ino)
		}
	}
	names[0] = 1
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		for i, d := range idx.Children[dir] {
			if err := idx.checkDirent(idx.Children[dir], i, dir); err != nil {
				return err
			}
			k := d.Ino - RootIno
			names[k]++
			plen := len(d.Name) // as cleanName sees it: "a/b", no leading slash
			if dir != RootIno {
				plen += int(pathLen[dir-RootIno]) + 1
			}
			if plen > MaxPathLen {
				return Invalidf("path of %q in directory %d is longer than %d", d.Name, dir, MaxPathLen)
			}
			if idx.Entries[k].Type != TypeDir {
				continue
			}
			if names[k] > 1 {
				return Invalidf("directory %d has more than one name (a directory hardlink or a cycle)", d.Ino)
			}
			pathLen[k] = int32(plen)
			queue = append(queue, d.Ino)
		}
	}
	for i, e := range idx.Entries {
		if names[i] == 0 {
			return Invalidf("inode %d is not reachable from the root", e.Ino)
		}
		if want := max(e.Nlink, 1); e.Type != TypeDir && names[i] != want {
			return Invalidf("inode %d has %d names but Nlink %d", e.Ino, names[i], e.Nlink)
		}
	}
	return nil
}

// checkDirent checks the i-th name of a directory listing.
func (idx *Index) checkDirent(list []Dirent, i int, dir uint64) error {
	d := list[i]
	if err := checkBaseName(d.Name); err != nil {
		return Invalidf("directory %d: %v", dir, err)
	}
	if i > 0 && list[i-1].Name >= d.Name {
		return Invalidf("directory %d: names %q and %q are not sorted and unique", dir, list[i-1].Name, d.Name)
	}
	if d.Ino < RootIno || d.Ino-RootIno >= uint64(len(idx.Entries)) {
		return Invalidf("directory %d: %q names inode %d, which does not exist", dir, d.Name, d.Ino)
	}
	if t := idx.Entries[d.Ino-RootIno].Type; d.Type != t {
		return Invalidf("directory %d: %q names inode %d as a %v, but it is a %v", dir, d.Name, d.Ino, d.Type, t)
	}
	return nil
}

func checkBaseName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("invalid name %q", name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("name %q contains '/' or NUL", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name is %d bytes, more than %d", len(name), MaxNameLen)
	}
	return nil
}

func (idx *Index) validateChunks(blobSize int64) error {
	total := 0
	for ino, chunks := range idx.Chunks {
		if ino < RootIno || ino-RootIno >= uint64(len(idx.Entries)) {
			return Invalidf("chunks listed for inode %d, which does not exist", ino)
		}
		if e := idx.Entries[ino-RootIno]; e.Type != TypeReg || e.Size == 0 {
			return Invalidf("chunks listed for inode %d, which is not a non-empty regular file", ino)
		}
		if total += len(chunks); total > MaxChunks {
			return Invalidf("more than %d chunks", MaxChunks)
		}
	}
	if err := idx.validateCheckpoints(blobSize); err != nil {
		return err
	}
	for i := range idx.Entries {
		e := &idx.Entries[i]
		if e.Type != TypeReg || e.Size == 0 {
			continue
		}
		if err := checkChunks(idx.Chunks[e.Ino], e.Size, blobSize); err != nil {
			return Invalidf("inode %d: %v", e.Ino, err)
		}
		if err := idx.checkSpans(idx.Chunks[e.Ino], blobSize); err != nil {
			return Invalidf("inode %d: %v", e.Ino, err)
		}
	}
	return nil
}

// validateCheckpoints checks a gzip layer's checkpoints: only a gzip
// layer has them, and it has at least the one at its start; each is
// one the decoder could have made, inside the blob, after the one before
// on both sides, and no span's output is longer than maxGzipSpan.
func (idx *Index) validateCheckpoints(blobSize int64) error {
	cps := idx.Checkpoints
	if (idx.Format == FormatGzip) != (len(cps) > 0) {
		return Invalidf("a %s index with %d checkpoints", idx.Format, len(cps))
	}
	if len(cps) == 0 {
		return nil
	}
	if len(cps) > MaxChunks {
		return Invalidf("%d checkpoints, more than %d", len(cps), MaxChunks)
	}
	if cps[0].In != 0 || cps[0].Out != 0 || !cps[0].AtMember {
		return Invalidf("first checkpoint at %d/%d, not at the start of the layer", cps[0].In, cps[0].Out)
	}
	for i, cp := range cps {
		if err := cp.Validate(); err != nil {
			return Invalidf("checkpoint %d: %v", i, err)
		}
		if cp.In >= blobSize {
			return Invalidf("checkpoint %d at byte %d, beyond the blob's %d bytes", i, cp.In, blobSize)
		}
		if i == 0 {
			continue
		}
		prev := cps[i-1]
		if cp.In <= prev.In || cp.Out <= prev.Out {
			return Invalidf("checkpoint %d (%d/%d) does not follow the one before (%d/%d)", i, cp.In, cp.Out, prev.In, prev.Out)
		}
		if cp.Out-prev.Out > maxGzipSpan {
			return Invalidf("checkpoints %d and %d are %d bytes of output apart, more than %d", i-1, i, cp.Out-prev.Out, maxGzipSpan)
		}
	}
	return nil
}

// checkSpans checks that each deflate chunk (and only a gzip layer has
// them) names a checkpoint, lies inside its span's output, and fetches
// no more than the span's bytes.
func (idx *Index) checkSpans(chunks []Chunk, blobSize int64) error {
	for _, c := range chunks {
		if (c.Encoding == EncodingDeflate) != (idx.Format == FormatGzip) {
			return fmt.Errorf("chunk at file offset %d has encoding %d in a %s index", c.FileOffset, c.Encoding, idx.Format)
		}
		if c.Encoding != EncodingDeflate {
			continue
		}
		k, found := slices.BinarySearchFunc(idx.Checkpoints, c.BlobOffset, func(cp Checkpoint, in int64) int { return cmp.Compare(cp.In, in) })
		if !found {
			return fmt.Errorf("chunk at file offset %d starts at byte %d, where no checkpoint is", c.FileOffset, c.BlobOffset)
		}
		out := int64(maxGzipSpan)
		if k+1 < len(idx.Checkpoints) {
			out = idx.Checkpoints[k+1].Out - idx.Checkpoints[k].Out
		}
		if c.Inner > out-c.Length {
			return fmt.Errorf("chunk at file offset %d: inner %d + length %d run past its span's %d bytes", c.FileOffset, c.Inner, c.Length, out)
		}
		// The chunk's bytes are a prefix of its span: those that decode
		// it. A length too short to decode it fails that chunk's reads
		// (the decoder runs out of input), nothing else.
		if end := spanEnd(idx.Checkpoints, k, blobSize); c.BlobLength > end-c.BlobOffset {
			return fmt.Errorf("chunk at file offset %d: blob length %d, more than its span's %d bytes", c.FileOffset, c.BlobLength, end-c.BlobOffset)
		}
	}
	return nil
}

func checkChunks(chunks []Chunk, size, blobSize int64) error {
	var next int64
	for _, c := range chunks {
		switch {
		case c.FileOffset != next:
			return fmt.Errorf("chunk at file offset %d, expected %d", c.FileOffset, next)
		case c.Length <= 0 || c.Length > MaxChunkLength || c.Length > size-next:
			return fmt.Errorf("chunk at file offset %d has length %d", c.FileOffset, c.Length)
		case c.Encoding < EncodingRaw || c.Encoding > EncodingDeflate:
			return fmt.Errorf("chunk at file offset %d has unknown encoding %d", c.FileOffset, c.Encoding)
		case c.Inner < 0 || c.BlobOffset < 0 || c.BlobLength <= 0 || c.BlobOffset > blobSize-c.BlobLength:
			return fmt.Errorf("chunk at file offset %d: blob range [%d, +%d) (inner %d) outside the blob of %d bytes",
				c.FileOffset, c.BlobOffset, c.BlobLength, c.Inner, blobSize)
		}
		if c.Encoding == EncodingRaw && c.Inner > c.BlobLength-c.Length {
			return fmt.Errorf("raw chunk at file offset %d: inner %d + length %d exceed its blob range of %d bytes",
				c.FileOffset, c.Inner, c.Length, c.BlobLength)
		}
		if err := validateDigest(c.Digest); err != nil {
			return fmt.Errorf("chunk at file offset %d: digest %q: %w", c.FileOffset, c.Digest, err)
		}
		next += c.Length
	}
	if next != size {
		return errors.New("chunks do not cover the whole file")
	}
	return nil
}
