package index

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"reflect"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// portableCases are a gzip and a tar layer's indexes, with their blobs.
func portableCases(t testing.TB) map[string]struct {
	idx  *Index
	blob []byte
} {
	tarBlob := writeTar(t, gzipFixture())
	gz := gzipLevel(t, tarBlob, gzip.DefaultCompression)
	out := map[string]struct {
		idx  *Index
		blob []byte
	}{}
	for name, blob := range map[string][]byte{"gzip": gz, "tar": tarBlob} {
		d := Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		idx, err := Read(context.Background(), bytes.NewReader(blob), d, WithGzip())
		if err != nil {
			t.Fatal(err)
		}
		out[name] = struct {
			idx  *Index
			blob []byte
		}{idx, blob}
	}
	return out
}

// normalized makes indexes comparable: empty and missing lists are the
// same, and windows compare by content.
func normalized(idx *Index) *Index {
	c := *idx
	c.Children = map[uint64][]Dirent{}
	for k, v := range idx.Children {
		if len(v) > 0 {
			c.Children[k] = v
		}
	}
	c.Chunks = map[uint64][]Chunk{}
	for k, v := range idx.Chunks {
		if len(v) > 0 {
			c.Chunks[k] = v
		}
	}
	for i := range c.Entries {
		if len(c.Entries[i].Xattrs) == 0 {
			c.Entries[i].Xattrs = nil
		}
	}
	return &c
}

func TestPortableRoundTrip(t *testing.T) {
	for name, tc := range portableCases(t) {
		t.Run(name, func(t *testing.T) {
			layer, size := digest.FromBytes(tc.blob), int64(len(tc.blob))
			enc, err := EncodePortable(tc.idx, layer, size)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s index: %d entries, %d checkpoints, %d bytes portable for a %d-byte layer",
				name, len(tc.idx.Entries), len(tc.idx.Checkpoints), len(enc), size)
			got, err := DecodePortable(enc, layer, size)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalized(got), normalized(tc.idx)) {
				t.Error("the decoded index differs from the encoded one")
			}
			// The same through the store: Save, then Load.
			db := testDB(t)
			if err := Save(db, "k", got, size); err != nil {
				t.Fatal(err)
			}
			loaded, err := Load(db, "k")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalized(loaded), normalized(tc.idx)) {
				t.Error("the loaded index differs from the saved one")
			}
			again, err := EncodePortable(loaded, layer, size)
			if err != nil || !bytes.Equal(again, enc) {
				t.Errorf("encoding the loaded index: %v, same bytes %v", err, bytes.Equal(again, enc))
			}

			if _, err := DecodePortable(enc, digest.FromString("other"), size); !errors.Is(err, ErrPortable) {
				t.Errorf("another layer's digest: %v, want ErrPortable", err)
			}
			if _, err := DecodePortable(enc, layer, size+1); !errors.Is(err, ErrPortable) {
				t.Errorf("another size: %v, want ErrPortable", err)
			}
			raw := decompress(t, enc)
			for _, cut := range []int{0, 5, len(raw) / 3, len(raw) / 2, len(raw) - 1} {
				if _, err := DecodePortable(compress(t, raw[:cut]), layer, size); !errors.Is(err, ErrInvalid) {
					t.Errorf("truncated to %d bytes: %v, want ErrInvalid", cut, err)
				}
			}
			if _, err := DecodePortable(compress(t, append(raw, 0)), layer, size); !errors.Is(err, ErrInvalid) {
				t.Errorf("a trailing byte: %v, want ErrInvalid", err)
			}
			if _, err := DecodePortable([]byte("not zstd at all"), layer, size); !errors.Is(err, ErrInvalid) {
				t.Errorf("garbage: %v, want ErrInvalid", err)
			}
		})
	}
}

// TestPortableHostile: indexes that decode but lie are refused by
// Validate: a file whose content lies outside the blob, a path escaping
// the root, a directory hardlink.
func TestPortableHostile(t *testing.T) {
	tc := portableCases(t)["gzip"]
	layer, size := digest.FromBytes(tc.blob), int64(len(tc.blob))
	for _, c := range []struct {
		name   string
		break_ func(idx *Index)
	}{
		{"a name with a slash", func(idx *Index) { idx.Children[RootIno][0].Name = "../../etc" }},
		{"a dot-dot name", func(idx *Index) { idx.Children[RootIno][0].Name = ".." }},
		{"a chunk beyond the blob", func(idx *Index) {
			for _, cs := range idx.Chunks {
				cs[0].BlobLength = size + 1
				return
			}
		}},
		{"a directory listed twice", func(idx *Index) {
			for ino, kids := range idx.Children {
				if ino != RootIno && len(kids) > 0 {
					idx.Children[RootIno] = append(idx.Children[RootIno], Dirent{Name: "zzz-again", Ino: ino, Type: TypeDir})
					return
				}
			}
		}},
		{"a format without a portable index", func(idx *Index) { idx.Format = FormatEStargz }},
	} {
		t.Run(c.name, func(t *testing.T) {
			idx := normalized(tc.idx)
			idx.Children = cloneChildren(tc.idx.Children)
			idx.Chunks = cloneChunks(tc.idx.Chunks)
			c.break_(idx)
			raw := portableRaw(idx, layer, size)
			if _, err := DecodePortable(compress(t, raw), layer, size); !errors.Is(err, ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", err)
			}
		})
	}
}

// TestPortableBombRefusedFromItsHead: a small stream that decompresses to
// the limit but is no index of the layer (zeros, or another layer's
// index padded) is refused from its first bytes, before the rest is
// decompressed into memory.
func TestPortableBombRefusedFromItsHead(t *testing.T) {
	tc := portableCases(t)["gzip"]
	layer, size := digest.FromBytes(tc.blob), int64(len(tc.blob))
	other := portableRaw(normalized(tc.idx), digest.FromString("another layer"), size)
	for name, raw := range map[string][]byte{
		"zeros":         make([]byte, 256<<20),
		"another layer": append(other, make([]byte, 256<<20)...),
	} {
		t.Run(name, func(t *testing.T) {
			bomb := compress(t, raw)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := DecodePortable(bomb, layer, size)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("decoded")
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 32<<20 {
				t.Errorf("refusing a %d-byte stream allocated %d MiB", len(bomb), n>>20)
			}
		})
	}
}

// portableRaw is EncodePortable's bytes before compression, made without
// its checks (to encode what it would refuse).
func portableRaw(idx *Index, layer digest.Digest, size int64) []byte {
	f := idx.Format
	idx.Format = FormatGzip
	enc, err := EncodePortable(idx, layer, size)
	idx.Format = f
	if err != nil {
		panic(err)
	}
	zd, _ := zstd.NewReader(nil)
	defer zd.Close()
	raw, err := zd.DecodeAll(enc, nil)
	if err != nil {
		panic(err)
	}
	if f != FormatGzip { // rewrite the format string in place
		i := bytes.Index(raw, []byte(FormatGzip))
		raw = append(append(append(raw[:i-1:i-1], byte(len(f))), f...), raw[i+len(FormatGzip):]...)
	}
	return raw
}

func cloneChildren(m map[uint64][]Dirent) map[uint64][]Dirent {
	out := map[uint64][]Dirent{}
	for k, v := range m {
		out[k] = append([]Dirent(nil), v...)
	}
	return out
}

func cloneChunks(m map[uint64][]Chunk) map[uint64][]Chunk {
	out := map[uint64][]Chunk{}
	for k, v := range m {
		out[k] = append([]Chunk(nil), v...)
	}
	return out
}

func compress(t testing.TB, raw []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil)
}

func decompress(t testing.TB, b []byte) []byte {
	zd, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zd.Close()
	raw, err := zd.DecodeAll(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// FuzzDecodePortable: whatever the bytes, DecodePortable returns a
// valid index or an error, and never panics or allocates beyond its input.
func FuzzDecodePortable(f *testing.F) {
	blob := writeTar(f, tarFixture())
	gz := gzipLevel(f, blob, gzip.BestSpeed)
	layer, size := digest.FromBytes(gz), int64(len(gz))
	idx, err := Read(context.Background(), bytes.NewReader(gz), Descriptor{Digest: layer, Size: size}, WithGzip())
	if err != nil {
		f.Fatal(err)
	}
	enc, err := EncodePortable(idx, layer, size)
	if err != nil {
		f.Fatal(err)
	}
	raw := decompress(f, enc)
	f.Add(raw)
	f.Add(raw[:len(raw)/2])
	f.Add([]byte(portableMagic + "\x01"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := decodePortable(raw, layer, size)
		if err != nil {
			return
		}
		if err := got.Validate(size); err != nil {
			return
		}
		// A valid index encodes again to what it decoded from.
		if _, err := EncodePortable(got, layer, size); err != nil {
			t.Fatalf("a valid index does not encode: %v", err)
		}
	})
}
