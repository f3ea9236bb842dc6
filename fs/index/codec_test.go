package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// codecEntries are entries with every field set to the values that stress
// its encoding: zero, extremes, nanoseconds, the zero time, times before
// 1970, binary and empty xattr values.
func codecEntries() map[string]Entry {
	return map[string]Entry{
		"zero":      {},
		"root":      {Ino: RootIno, Type: TypeDir, Mode: 0o755},
		"zero time": {Ino: 2, Type: TypeDir, Mode: 0o755, ModTime: time.Time{}},
		"file": {Ino: 3, Type: TypeReg, Mode: 0o4755, UID: 70000, GID: 1000, Size: 10 << 30, Nlink: 3,
			ModTime: time.Date(2021, 2, 3, 4, 5, 6, 123456789, time.UTC)},
		"extremes": {Ino: math.MaxUint64, Type: 255, Mode: math.MaxUint32, UID: math.MaxUint32, GID: math.MaxUint32,
			Size: math.MaxInt64, DevMajor: math.MaxUint32, DevMinor: math.MaxUint32, Nlink: math.MaxUint32,
			ModTime: time.Unix(1<<40, 999999999).UTC()},
		"negative": {Ino: 4, Type: TypeReg, Size: math.MinInt64, ModTime: time.Unix(-1, 1).UTC()},
		"before":   {Ino: 5, Type: TypeFifo, ModTime: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)},
		"symlink":  {Ino: 6, Type: TypeSymlink, Mode: 0o777, Size: 13, LinkTarget: "../usr/lib/ä\x01"},
		"device":   {Ino: 7, Type: TypeBlock, Mode: 0o660, DevMajor: 259, DevMinor: 1 << 20},
		"whiteout": {Ino: 8, Type: TypeChar},
		"opaque":   {Ino: 9, Type: TypeDir, Xattrs: map[string][]byte{XattrOverlayOpaque: []byte("y")}},
		"xattrs": {Ino: 10, Type: TypeReg, Xattrs: map[string][]byte{
			"user.empty":          {},
			"user.binary":         {0, 0xff, 0x80, 0},
			"security.capability": bytes.Repeat([]byte{1, 2, 3}, 1000),
			"":                    []byte("no name"),
		}},
	}
}

func codecChunks() map[string]Chunk {
	return map[string]Chunk{
		"zero": {},
		"gzip": {FileOffset: 4 << 20, Length: 4 << 20, BlobOffset: 1 << 40, BlobLength: 12345, Encoding: EncodingGzip,
			Digest: digest.FromString("a")},
		"zstd inner": {FileOffset: 0, Length: 1, BlobOffset: 0, BlobLength: 1, Inner: 99, Encoding: EncodingZstd,
			Digest: digest.FromString("b")},
		"sha512":        {Length: 1, Encoding: EncodingRaw, Digest: digest.Digest("sha512:" + strings.Repeat("ab", 64))},
		"upper sha256":  {Length: 1, Encoding: EncodingRaw, Digest: digest.Digest(strings.ToUpper(string(digest.FromString("d"))))},
		"not a digest":  {Length: 1, Digest: "sha256:nope"},
		"extremes":      {FileOffset: math.MaxInt64, Length: math.MinInt64, BlobOffset: -1, BlobLength: math.MaxInt64, Inner: math.MinInt64, Encoding: 255},
		"sha256 prefix": {Digest: digest.Digest("sha256:" + strings.Repeat("0", 63) + "g")},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for name, e := range codecEntries() {
		t.Run(name, func(t *testing.T) {
			b := appendEntry(nil, &e)
			got, err := decodeEntry(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("decoded %+v\nwant    %+v", got, e)
			}
			if !bytes.Equal(appendEntry(nil, &got), b) {
				t.Fatal("re-encoding differs")
			}
			checkTornValues(t, b, func(b []byte) error { _, err := decodeEntry(b); return err })
		})
	}
}

func TestChunkRoundTrip(t *testing.T) {
	for name, c := range codecChunks() {
		t.Run(name, func(t *testing.T) {
			b := appendChunk(nil, &c)
			got, err := decodeChunk(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != c {
				t.Fatalf("decoded %+v\nwant    %+v", got, c)
			}
			checkTornValues(t, b, func(b []byte) error { _, err := decodeChunk(b); return err })
		})
	}
}

// checkTornValues: every prefix of a stored value, and the value with a
// byte more, is refused with ErrInvalid.
func checkTornValues(t *testing.T, b []byte, decode func([]byte) error) {
	t.Helper()
	for n := range len(b) {
		if err := decode(b[:n]); !errors.Is(err, ErrInvalid) {
			t.Fatalf("first %d of %d bytes: %v", n, len(b), err)
		}
	}
	if err := decode(append(b[:len(b):len(b)], 0)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("trailing byte: %v", err)
	}
}

// TestSHA256DigestIsCompact: the digest nearly every chunk carries is
// stored as 32 bytes, not 71.
func TestSHA256DigestIsCompact(t *testing.T) {
	c := Chunk{Length: 1, Encoding: EncodingGzip, Digest: digest.FromString("x")}
	if b := appendChunk(nil, &c); len(b) > 6+1+32 {
		t.Fatalf("chunk stored in %d bytes", len(b))
	}
}

func TestEntryTimeInUTC(t *testing.T) {
	mt := time.Date(2021, 2, 3, 4, 5, 6, 7, time.FixedZone("x", 2*3600))
	got, err := decodeEntry(appendEntry(nil, &Entry{ModTime: mt}))
	if err != nil || !got.ModTime.Equal(mt) || got.ModTime.Location() != time.UTC {
		t.Fatalf("mtime %v %v, want %v in UTC", got.ModTime, err, mt)
	}
}

func TestDecodeRefusesGarbage(t *testing.T) {
	e := appendEntry(nil, &Entry{Ino: 1, Type: TypeDir})
	overlong := bytes.Repeat([]byte{0xff}, 11)
	for name, b := range map[string][]byte{
		"empty":           nil,
		"overlong varint": overlong,
		"mode over 32 bits": append([]byte{1, byte(TypeDir)},
			0x80, 0x80, 0x80, 0x80, 0x10), // 1<<32
		"nanoseconds":    append(binary.AppendUvarint(append(e[:6:6], 0), 1e9), 0, 0, 0, 0, 0),
		"xattr count":    append(e[:len(e)-1:len(e)-1], 0xff, 0xff, 0xff, 0xff, 0x0f),
		"xattr too long": append(e[:len(e)-1:len(e)-1], 1, 1, 'a', 100, 'b'),
	} {
		if _, err := decodeEntry(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("entry %s: %v", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty":           nil,
		"digest tag":      {0, 0, 0, 0, 0, 2, 2},
		"short sha256":    append([]byte{0, 0, 0, 0, 0, 2, digestTagSHA256}, make([]byte, 31)...),
		"long string":     {0, 0, 0, 0, 0, 2, digestTagString, 10, 'a'},
		"overlong varint": overlong,
	} {
		if _, err := decodeChunk(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("chunk %s: %v", name, err)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	for _, e := range codecEntries() {
		b := appendEntry(nil, &e)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		again, err := decodeEntry(appendEntry(nil, &e))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", e, err)
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip changed %+v into %+v", e, again)
		}
	})
}

// FuzzDecodeStoredChunk is decodeChunk's fuzz test (FuzzDecodeChunk is
// DecodeChunk's, which decodes chunk content).
func FuzzDecodeStoredChunk(f *testing.F) {
	for _, c := range codecChunks() {
		b := appendChunk(nil, &c)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeChunk(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		again, err := decodeChunk(appendChunk(nil, &c))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", c, err)
		}
		if again != c {
			t.Fatalf("round trip changed %+v into %+v", c, again)
		}
	})
}
