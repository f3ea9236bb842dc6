package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// A layer index travels between machines (pushed next to the image as an
// OCI artifact, see `strata index`) in a portable form: the Index a
// format reader made, bound to the layer it describes, so that a machine
// that fetches it mounts a plain gzip or tar layer lazily without reading
// the layer first. It is the binary form of codec.go, framed and
// compressed:
//
//	magic      "strata-layer-index", then version byte 1
//	layer      string: the layer blob's digest
//	blobSize   uvarint
//	format     string: FormatGzip or FormatTar
//	entries    uvarint n, then n values (uvarint length, Entry form)
//	dirs       uvarint n, then per directory: uvarint ino, uvarint count,
//	           then per name: string name, uvarint ino, byte type
//	files      uvarint n, then per file: uvarint ino, uvarint count,
//	           then count values (uvarint length, Chunk form)
//	checkpoints uvarint n, then n values (uvarint length, inflate's encoding)
//
// all of it compressed as one zstd frame. It is hostile input when it
// comes from a registry: DecodePortable bounds every count by the bytes
// left, refuses trailing bytes and any layer or size but the expected
// one, and returns only an Index that passes Validate.
const (
	portableMagic   = "strata-layer-index"
	portableVersion = 1
	// PortableMediaType is the media type of a portable layer index blob.
	PortableMediaType = "application/vnd.stratafs.layer-index.v1+zstd"
	// MaxPortableSize bounds a portable index, compressed and not: an
	// index of MaxEntries files with a chunk each is about 300 MiB.
	MaxPortableSize = 512 << 20
)

// ErrPortable is wrapped by DecodePortable's errors about an index that
// is not one for the expected layer.
var ErrPortable = errors.New("not an index of this layer")

// EncodePortable returns the portable form of idx, the index of the
// layer blob layer of blobSize bytes (a gzip or tar layer's: the only
// formats whose index cannot be read cheaply from the layer itself).
func EncodePortable(idx *Index, layer digest.Digest, blobSize int64) ([]byte, error) {
	if idx.Format != FormatGzip && idx.Format != FormatTar {
		return nil, fmt.Errorf("a %s layer carries its own index", idx.Format)
	}
	if idx.Unpacked != "" {
		return nil, fmt.Errorf("the index of a layer fetched whole describes its local tar, not the layer")
	}
	b := append([]byte(portableMagic), portableVersion)
	b = appendString(b, layer.String())
	b = binary.AppendUvarint(b, uint64(blobSize))
	b = appendString(b, string(idx.Format))
	b = binary.AppendUvarint(b, uint64(len(idx.Entries)))
	var v []byte
	for i := range idx.Entries {
		v = appendEntry(v[:0], &idx.Entries[i])
		b = appendBytes(b, v)
	}
	dirs := sortedKeys(idx.Children)
	b = binary.AppendUvarint(b, uint64(len(dirs)))
	for _, ino := range dirs {
		kids := idx.Children[ino]
		b = binary.AppendUvarint(b, ino)
		b = binary.AppendUvarint(b, uint64(len(kids)))
		for _, k := range kids {
			b = appendString(b, k.Name)
			b = binary.AppendUvarint(b, k.Ino)
			b = append(b, byte(k.Type))
		}
	}
	files := sortedKeys(idx.Chunks)
	b = binary.AppendUvarint(b, uint64(len(files)))
	for _, ino := range files {
		chunks := idx.Chunks[ino]
		b = binary.AppendUvarint(b, ino)
		b = binary.AppendUvarint(b, uint64(len(chunks)))
		for i := range chunks {
			v = appendChunk(v[:0], &chunks[i])
			b = appendBytes(b, v)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(idx.Checkpoints)))
	for _, cp := range idx.Checkpoints {
		var err error
		if v, err = cp.AppendBinary(v[:0]); err != nil {
			return nil, err
		}
		b = appendBytes(b, v)
	}
	if len(b) > MaxPortableSize {
		return nil, fmt.Errorf("the index is %d bytes, more than %d", len(b), MaxPortableSize)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil), nil
}

func appendBytes(dst, v []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(v))), v...)
}

// DecodePortable decodes a portable index made by EncodePortable and
// returns it only when it describes the layer blob layer of blobSize
// bytes and passes Validate(blobSize). Errors wrap ErrPortable for an
// index of another layer, ErrInvalid for anything malformed.
func DecodePortable(data []byte, layer digest.Digest, blobSize int64) (*Index, error) {
	if len(data) > MaxPortableSize {
		return nil, Invalidf("portable index of %d bytes, more than %d", len(data), MaxPortableSize)
	}
	zd, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(MaxPortableSize), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return nil, Invalidf("portable index: %v", err)
	}
	defer zd.Close()
	// Its head first: what is not an index of this layer (a stream of
	// zeros that decompresses to the limit, say) is refused before any
	// more of it is decompressed into memory.
	head := make([]byte, len(portableMagic)+1+binary.MaxVarintLen64+len(layer.String()))
	n, err := io.ReadFull(zd, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, Invalidf("portable index: %v", err)
	}
	if _, err := checkPortableHead(head[:n], layer); err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(io.MultiReader(bytes.NewReader(head[:n]), zd), MaxPortableSize+1))
	if err != nil {
		return nil, Invalidf("portable index: %v", err)
	}
	if len(raw) > MaxPortableSize {
		return nil, Invalidf("portable index decompresses to more than %d bytes", MaxPortableSize)
	}
	idx, err := decodePortable(raw, layer, blobSize)
	if err != nil {
		return nil, err
	}
	if err := idx.Validate(blobSize); err != nil {
		return nil, fmt.Errorf("portable index of %s: %w", layer, err)
	}
	return idx, nil
}

// checkPortableHead checks the first bytes of a portable index, its
// magic, version and the layer it describes, and returns a decoder of
// what follows them.
func checkPortableHead(head []byte, layer digest.Digest) (*decoder, error) {
	if !bytes.HasPrefix(head, []byte(portableMagic)) || len(head) < len(portableMagic)+1 {
		return nil, Invalidf("not a portable layer index")
	}
	if v := head[len(portableMagic)]; v != portableVersion {
		return nil, Invalidf("portable layer index version %d, this build reads %d", v, portableVersion)
	}
	d := &decoder{b: head[len(portableMagic)+1:]}
	want := layer.String()
	if n := d.uvarint(); d.err != nil || n != uint64(len(want)) {
		return nil, fmt.Errorf("%w: it describes another layer than %s", ErrPortable, layer)
	}
	if got := string(d.take(uint64(len(want)))); d.err != nil || got != want {
		return nil, fmt.Errorf("%w: it describes layer %q, not %s", ErrPortable, got, layer)
	}
	return d, nil
}

func decodePortable(raw []byte, layer digest.Digest, blobSize int64) (*Index, error) {
	d, err := checkPortableHead(raw, layer)
	if err != nil {
		return nil, err
	}
	if got := d.uvarint(); d.err == nil && got != uint64(blobSize) {
		return nil, fmt.Errorf("%w: it describes a blob of %d bytes, not %d", ErrPortable, got, blobSize)
	}
	idx := &Index{Format: Format(d.bytes()), Children: map[uint64][]Dirent{}, Chunks: map[uint64][]Chunk{}}
	if d.err == nil && idx.Format != FormatGzip && idx.Format != FormatTar {
		return nil, Invalidf("portable index of a %q layer", idx.Format)
	}
	// Every element takes at least one byte, so no count may exceed the
	// bytes left: nothing is allocated beyond what the input holds.
	count := func(max int) int {
		n := d.uvarint()
		if n > uint64(len(d.b)) || n > uint64(max) {
			d.fail(errOverflow)
			return 0
		}
		return int(n)
	}
	n := count(MaxEntries)
	idx.Entries = make([]Entry, 0, n)
	for range n {
		e, err := decodeEntry(d.bytes())
		if d.err != nil {
			break
		}
		if err != nil {
			return nil, err
		}
		idx.Entries = append(idx.Entries, e)
	}
	for range count(MaxEntries) {
		ino, k := d.uvarint(), count(MaxEntries)
		if _, dup := idx.Children[ino]; dup && d.err == nil {
			return nil, Invalidf("portable index lists directory %d twice", ino)
		}
		kids := make([]Dirent, 0, k)
		for range k {
			kids = append(kids, Dirent{Name: string(d.bytes()), Ino: d.uvarint(), Type: Type(d.byte())})
		}
		idx.Children[ino] = kids
	}
	total := 0
	for range count(MaxEntries) {
		ino, k := d.uvarint(), count(MaxChunks)
		if total += k; total > MaxChunks {
			return nil, Invalidf("portable index has more than %d chunks", MaxChunks)
		}
		if _, dup := idx.Chunks[ino]; dup && d.err == nil {
			return nil, Invalidf("portable index lists the chunks of inode %d twice", ino)
		}
		chunks := make([]Chunk, 0, k)
		for range k {
			c, err := decodeChunk(d.bytes())
			if d.err != nil {
				break
			}
			if err != nil {
				return nil, err
			}
			chunks = append(chunks, c)
		}
		idx.Chunks[ino] = chunks
	}
	for range count(MaxChunks) {
		var cp Checkpoint
		v := d.bytes()
		if d.err != nil {
			break
		}
		if err := cp.UnmarshalBinary(v); err != nil {
			return nil, fmt.Errorf("%w: portable index: checkpoint: %w", ErrInvalid, err)
		}
		idx.Checkpoints = append(idx.Checkpoints, cp)
	}
	if err := d.finish(); err != nil {
		return nil, Invalidf("portable index: %v", err)
	}
	return idx, nil
}

// Load reads the whole index stored under key into memory, as the format
// reader made it (for EncodePortable; mounts read through Open's view).
func Load(db *bolt.DB, key string) (*Index, error) {
	l, err := Open(db, key)
	if err != nil {
		return nil, err
	}
	tx, lb, err := l.begin()
	if err != nil {
		return nil, err
	}
	defer rollback(tx)
	info := l.Info()
	idx := &Index{Format: info.Format, PrefetchEnd: info.PrefetchEnd, Unpacked: info.Unpacked, Packed: info.Packed,
		Entries: make([]Entry, info.Entries), Children: map[uint64][]Dirent{}, Chunks: map[uint64][]Chunk{}}
	for _, name := range [][]byte{bucketEntries, bucketDirs} {
		b, err := l.bucket(lb, name)
		if err != nil {
			return nil, err
		}
		err = b.ForEach(func(k, v []byte) error {
			e, err := decodeEntry(v)
			if err != nil {
				return err
			}
			if e.Ino < RootIno || e.Ino-RootIno >= uint64(len(idx.Entries)) {
				return Invalidf("stored entry %d beyond the %d entries", e.Ino, len(idx.Entries))
			}
			idx.Entries[e.Ino-RootIno] = e
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	db2, err := l.bucket(lb, bucketDirents)
	if err != nil {
		return nil, err
	}
	err = db2.ForEach(func(k, v []byte) error {
		if len(k) < 8 || len(v) != direntSize {
			return Invalidf("stored directory entry of %d/%d bytes", len(k), len(v))
		}
		parent := binary.BigEndian.Uint64(k)
		idx.Children[parent] = append(idx.Children[parent], Dirent{Name: string(k[8:]), Ino: binary.BigEndian.Uint64(v), Type: Type(v[8])})
		return nil
	})
	if err != nil {
		return nil, err
	}
	cb, err := l.bucket(lb, bucketChunks)
	if err != nil {
		return nil, err
	}
	err = cb.ForEach(func(k, v []byte) error {
		if len(k) != 16 {
			return Invalidf("stored chunk key of %d bytes", len(k))
		}
		c, err := decodeChunk(v)
		if err != nil {
			return err
		}
		ino := binary.BigEndian.Uint64(k)
		idx.Chunks[ino] = append(idx.Chunks[ino], c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if info.Checkpoints > 0 {
		kb, err := l.bucket(lb, bucketCPs)
		if err != nil {
			return nil, err
		}
		err = kb.ForEach(func(_, v []byte) error {
			var cp Checkpoint
			if err := cp.UnmarshalBinary(v); err != nil {
				return fmt.Errorf("%w: stored checkpoint: %w", ErrInvalid, err)
			}
			idx.Checkpoints = append(idx.Checkpoints, cp)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	// Keys sort as the values do (big-endian numbers, then names), so
	// every list is in order already; sort anyway, it is cheap.
	for _, kids := range idx.Children {
		slices.SortFunc(kids, compareDirents)
	}
	return idx, nil
}
