package index

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

const validBlobSize = 100

// validIndex has one of each shape: a hardlinked file with two chunks, a
// directory holding a whiteout, a symlink.
func validIndex() *Index {
	mt := time.Unix(1700000000, 0).UTC()
	return &Index{
		Format: "test",
		Entries: []Entry{
			{Ino: 1, Type: TypeDir, Mode: 0o755, ModTime: mt},
			{Ino: 2, Type: TypeReg, Mode: 0o4755, Size: 10, Nlink: 2},
			{Ino: 3, Type: TypeDir, Mode: 0o1777, Xattrs: map[string][]byte{XattrOverlayOpaque: []byte("y")}},
			{Ino: 4, Type: TypeChar},
			{Ino: 5, Type: TypeSymlink, LinkTarget: "t", Size: 1},
		},
		Children: map[uint64][]Dirent{
			1: {{"a", 2, TypeReg}, {"b", 2, TypeReg}, {"d", 3, TypeDir}, {"s", 5, TypeSymlink}},
			3: {{"gone", 4, TypeChar}},
		},
		Chunks: map[uint64][]Chunk{
			2: {
				{FileOffset: 0, Length: 4, BlobOffset: 0, BlobLength: 30, Encoding: EncodingGzip, Digest: digest.FromString("a")},
				{FileOffset: 4, Length: 6, BlobOffset: 30, BlobLength: 70, Inner: 5, Encoding: EncodingZstd, Digest: digest.FromString("b")},
			},
		},
	}
}

func TestValidateAccepts(t *testing.T) {
	if err := validIndex().Validate(validBlobSize); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRefuses(t *testing.T) {
	longName := strings.Repeat("n", MaxNameLen)
	cases := []struct {
		name   string
		mutate func(*Index)
		want   string
	}{
		{"no entries", func(x *Index) { x.Entries = nil }, "0 entries"},
		{"root not dir", func(x *Index) { x.Entries[0].Type = TypeFifo }, "not a directory"},
		{"ino not dense", func(x *Index) { x.Entries[2].Ino = 7 }, "entry 3 has inode number 7"},
		{"unknown type", func(x *Index) { x.Entries[3].Type = 42 }, "unknown type"},
		{"mode bits", func(x *Index) { x.Entries[1].Mode = 0o100644 }, "outside 07777"},
		{"negative size", func(x *Index) { x.Entries[1].Size = -1 }, "negative size"},
		{"symlink size", func(x *Index) { x.Entries[4].Size = 2 }, "symlink size"},
		{"symlink empty", func(x *Index) { x.Entries[4].LinkTarget, x.Entries[4].Size = "", 0 }, "empty target"},
		{"link target on reg", func(x *Index) { x.Entries[1].LinkTarget = "x" }, "with a link target"},
		{"size on dir", func(x *Index) { x.Entries[2].Size = 4096 }, "with size"},
		{"dev on reg", func(x *Index) { x.Entries[1].DevMajor = 1 }, "device numbers"},
		{"dir nlink", func(x *Index) { x.Entries[2].Nlink = 2 }, "directory with Nlink"},
		{"xattr size", func(x *Index) { x.Entries[2].Xattrs["user.big"] = make([]byte, MaxXattrSize+1) }, "more than 65536"},
		{"children of a file", func(x *Index) { x.Children[2] = nil }, "not a directory"},
		{"children of nothing", func(x *Index) { x.Children[99] = nil }, "not a directory"},
		{"unsorted", func(x *Index) { x.Children[1][0], x.Children[1][2] = x.Children[1][2], x.Children[1][0] }, "not sorted"},
		{"duplicate name", func(x *Index) { x.Children[1][1].Name = "a" }, "not sorted and unique"},
		{"slash in name", func(x *Index) { x.Children[1][3].Name = "s/x" }, "contains '/'"},
		{"dotdot name", func(x *Index) { x.Children[3][0].Name = ".." }, "invalid name"},
		{"long name", func(x *Index) { x.Children[3][0].Name = longName + "n" }, "more than 255"},
		{"dangling dirent", func(x *Index) { x.Children[3][0].Ino = 99 }, "does not exist"},
		{"unreachable", func(x *Index) { x.Children[3] = nil }, "inode 4 is not reachable"},
		{"dir hardlink", func(x *Index) { x.Children[1] = append(x.Children[1], Dirent{"z", 3, TypeDir}) }, "more than one name"},
		{"cycle", func(x *Index) { x.Children[3] = append(x.Children[3], Dirent{"up", 1, TypeDir}) }, "more than one name"},
		{"dirent type", func(x *Index) { x.Children[1][3].Type = TypeReg }, `"s" names inode 5 as a reg, but it is a symlink`},
		{"dirent no type", func(x *Index) { x.Children[3][0].Type = 0 }, "as a type(0), but it is a char"},
		{"nlink mismatch", func(x *Index) { x.Entries[1].Nlink = 3 }, "2 names but Nlink 3"},
		{"nlink missing", func(x *Index) { x.Entries[1].Nlink = 0 }, "2 names but Nlink 0"},
		{"chunks of a dir", func(x *Index) { x.Chunks[3] = x.Chunks[2] }, "not a non-empty regular file"},
		{"chunks of nothing", func(x *Index) { x.Chunks[0] = nil }, "does not exist"},
		{"missing chunks", func(x *Index) { delete(x.Chunks, 2) }, "do not cover"},
		{"chunk gap", func(x *Index) { x.Chunks[2][1].FileOffset = 5 }, "expected 4"},
		{"chunk short", func(x *Index) { x.Chunks[2][1].Length = 5 }, "do not cover"},
		{"chunk past size", func(x *Index) { x.Chunks[2][1].Length = 7 }, "has length 7"},
		{"chunk too long", func(x *Index) { x.Entries[1].Size = 2*MaxChunkLength + 4; x.Chunks[2][1].Length = 2 * MaxChunkLength }, "has length"},
		{"chunk beyond blob", func(x *Index) { x.Chunks[2][1].BlobLength = 71 }, "outside the blob"},
		{"chunk negative blob offset", func(x *Index) { x.Chunks[2][0].BlobOffset = -1 }, "outside the blob"},
		{"chunk empty blob range", func(x *Index) { x.Chunks[2][0].BlobLength = 0 }, "outside the blob"},
		{"chunk negative inner", func(x *Index) { x.Chunks[2][0].Inner = -1 }, "outside the blob"},
		{"raw inner beyond", func(x *Index) { x.Chunks[2][1].Encoding = EncodingRaw; x.Chunks[2][1].Inner = 65 }, "exceed its blob range"},
		{"chunk encoding", func(x *Index) { x.Chunks[2][0].Encoding = 0 }, "unknown encoding"},
		{"chunk digest", func(x *Index) { x.Chunks[2][0].Digest = "sha256:nope" }, "digest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			idx := validIndex()
			tc.mutate(idx)
			err := idx.Validate(validBlobSize)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}

func TestValidateBlobSizeAndNil(t *testing.T) {
	if err := validIndex().Validate(99); !errors.Is(err, ErrInvalid) {
		t.Errorf("blob one byte too small: %v", err)
	}
	if err := validIndex().Validate(-1); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative blob size: %v", err)
	}
	var idx *Index
	if err := idx.Validate(0); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil index: %v", err)
	}
}

func TestValidatePathLength(t *testing.T) {
	// 16 nested directories of 255-byte names make a 4095-byte path
	// (15 slashes); "/x" under it makes 4097 bytes, one too many.
	build := func(leaf string) *Index {
		idx := &Index{Entries: []Entry{{Ino: 1, Type: TypeDir}}, Children: map[uint64][]Dirent{}}
		for i := range 16 {
			ino := uint64(i + 2)
			idx.Entries = append(idx.Entries, Entry{Ino: ino, Type: TypeDir})
			idx.Children[ino-1] = []Dirent{{fmt.Sprintf("%03d%s", i, strings.Repeat("d", MaxNameLen-3)), ino, TypeDir}}
		}
		idx.Entries = append(idx.Entries, Entry{Ino: 18, Type: TypeFifo})
		idx.Children[17] = []Dirent{{leaf, 18, TypeFifo}}
		return idx
	}
	if err := build("").Validate(0); err == nil {
		t.Error("empty leaf name accepted")
	}
	if err := build("x").Validate(0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "longer than 4096") {
		t.Errorf("4097-byte path: %v", err)
	}
	idx := build("x")
	idx.Children[16][0].Name = "short"
	if err := idx.Validate(0); err != nil {
		t.Errorf("shorter path: %v", err)
	}
}
