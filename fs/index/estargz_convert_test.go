package index

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

func readJTOC(t *testing.T, data []byte, entries []*estargz.TOCEntry) *Index {
	t.Helper()
	blob := jtocBlob(t, data, entries)
	idx, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestConvertRootAndImplicitDirs(t *testing.T) {
	idx := readJTOC(t, nil, []*estargz.TOCEntry{
		{Name: "a/b/f", Type: "fifo"},
		{Name: "./", Type: "dir", Mode: 0o700, UID: 5, ModTime3339: "2020-01-01T00:00:00Z"},
		{Name: "a/", Type: "dir", Mode: 0o750, GID: 7}, // explicit after implicit: applies
		{Name: "a", Type: "dir", Mode: 0o750, GID: 7},  // identical repeat: tolerated
		{Name: ".", Type: "dir", Mode: 0o700, UID: 5, ModTime3339: "2020-01-01T00:00:00Z"},
	})
	root := idx.Entries[0]
	if root.Mode != 0o700 || root.UID != 5 || !root.ModTime.Equal(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("root = %+v", root)
	}
	if a := lookupPath(idx, "a"); a == nil || a.Mode != 0o750 || a.GID != 7 {
		t.Errorf("a = %+v", a)
	}
	if b := lookupPath(idx, "a/b"); b == nil || b.Type != TypeDir || b.Mode != 0o755 || !b.ModTime.IsZero() {
		t.Errorf("implicit a/b = %+v", b)
	}
	if len(idx.Entries) != 4 {
		t.Errorf("%d entries, want root, a, a/b, a/b/f", len(idx.Entries))
	}
	for i, e := range idx.Entries {
		if e.Ino != uint64(i)+RootIno {
			t.Errorf("entry %d has ino %d", i, e.Ino)
		}
	}
}

func TestConvertWhiteoutsAndOverlayXattrs(t *testing.T) {
	idx := readJTOC(t, nil, []*estargz.TOCEntry{
		{Name: ".wh.top", Type: "reg", Mode: 0o644, UID: 3},
		{Name: "d/.wh..wh..opq", Type: "reg"}, // before its directory's entry
		{Name: "d/", Type: "dir", Mode: 0o711, Xattrs: map[string][]byte{
			"trusted.overlay.redirect": []byte("/elsewhere"), // never from a layer
			"user.keep":                []byte("1"),
		}},
		{Name: "d/.wh.gone", Type: "reg"}, // in an opaque directory: hides nothing, dropped
		{Name: "g/.wh.gone", Type: "reg"},
		{Name: "e/.wh..wh..opq", Type: "reg"},
		{Name: "f", Type: "reg", Xattrs: map[string][]byte{"trusted.overlay.opaque": []byte("y")}},
	})
	for _, p := range []string{"top", "g/gone"} {
		w := lookupPath(idx, p)
		if w == nil || w.Type != TypeChar || w.Mode != 0 || w.UID != 0 || w.DevMajor != 0 || w.DevMinor != 0 {
			t.Errorf("whiteout %s = %+v", p, w)
		}
	}
	d := lookupPath(idx, "d")
	if d == nil || d.Mode != 0o711 || string(d.Xattrs[XattrOverlayOpaque]) != "y" ||
		d.Xattrs["trusted.overlay.redirect"] != nil || string(d.Xattrs["user.keep"]) != "1" {
		t.Errorf("d = %+v", d)
	}
	if e := lookupPath(idx, "e"); e == nil || string(e.Xattrs[XattrOverlayOpaque]) != "y" {
		t.Errorf("implicit opaque e = %+v", e)
	}
	if f := lookupPath(idx, "f"); f == nil || len(f.Xattrs) != 0 {
		t.Errorf("a file may not make itself opaque: %+v", f)
	}
	for _, p := range []string{".wh.top", "d/.wh..wh..opq", "d/.wh.gone", "d/gone", "g/.wh.gone"} {
		if lookupPath(idx, p) != nil {
			t.Errorf("%s is listed", p)
		}
	}
}

func TestConvertHardlinksAndModes(t *testing.T) {
	d := digest.FromString("x").String()
	idx := readJTOC(t, make([]byte, 100), []*estargz.TOCEntry{
		{Name: "f", Type: "reg", Size: 1, Offset: 10, ChunkDigest: d, Mode: 0o104755}, // tar type bits above 07777
		{Name: "l1", Type: "hardlink", LinkName: "./f", Mode: 0o777},
		{Name: "sub/l2", Type: "hardlink", LinkName: "l1"}, // a link to a link is a link to f
		{Name: "s", Type: "symlink", LinkName: "../../etc/shadow"},
		{Name: "s2", Type: "hardlink", LinkName: "s"},
		{Name: "t", Type: "dir", Mode: 0o41777},
		{Name: "when", Type: "fifo", ModTime3339: "2021-02-03T04:05:06.123456789+02:00"},
	})
	f := lookupPath(idx, "f")
	for _, p := range []string{"l1", "sub/l2"} {
		if l := lookupPath(idx, p); l == nil || l.Ino != f.Ino {
			t.Errorf("%s is not f", p)
		}
	}
	if f.Nlink != 3 || f.Mode != 0o4755 {
		t.Errorf("f = %+v", f)
	}
	if s := lookupPath(idx, "s"); s.Nlink != 2 || s.LinkTarget != "../../etc/shadow" || s.Size != 16 {
		t.Errorf("s = %+v", s)
	}
	if tdir := lookupPath(idx, "t"); tdir.Mode != 0o1777 {
		t.Errorf("t mode %#o", tdir.Mode)
	}
	want := time.Date(2021, 2, 3, 2, 5, 6, 123456789, time.UTC)
	if w := lookupPath(idx, "when"); !w.ModTime.Equal(want) || w.ModTime.Location() != time.UTC {
		t.Errorf("mtime %v, want %v", w.ModTime, want)
	}
}

func TestConvertChunkRanges(t *testing.T) {
	d := digest.FromString("x").String()
	// Streams start at 10, 40 and 70; the TOC is at 100. "b" shares the
	// stream at 40 with the end of "a"; "c" is one chunk to its end.
	idx := readJTOC(t, make([]byte, 100), []*estargz.TOCEntry{
		{Name: "a", Type: "reg", Size: 25, Offset: 10, ChunkSize: 10, ChunkDigest: d},
		{Name: "a", Type: "chunk", Offset: 40, ChunkOffset: 10, ChunkDigest: d},
		{Name: "b", Type: "reg", Size: 5, Offset: 40, InnerOffset: 700, ChunkDigest: d},
		{Name: "c", Type: "reg", Size: 8, Offset: 70, ChunkDigest: d},
		{Name: "empty", Type: "reg", ChunkDigest: d},
	})
	check := func(name string, want []Chunk) {
		t.Helper()
		got := idx.Chunks[lookupPath(idx, name).Ino]
		if len(got) != len(want) {
			t.Fatalf("%s: %+v", name, got)
		}
		for i := range want {
			want[i].Encoding, want[i].Digest = EncodingGzip, digest.Digest(d)
			if got[i] != want[i] {
				t.Errorf("%s chunk %d = %+v, want %+v", name, i, got[i], want[i])
			}
		}
	}
	check("a", []Chunk{{FileOffset: 0, Length: 10, BlobOffset: 10, BlobLength: 30}, {FileOffset: 10, Length: 15, BlobOffset: 40, BlobLength: 30}})
	check("b", []Chunk{{FileOffset: 0, Length: 5, BlobOffset: 40, BlobLength: 30, Inner: 700}})
	check("c", []Chunk{{FileOffset: 0, Length: 8, BlobOffset: 70, BlobLength: 30}})
	if _, ok := idx.Chunks[lookupPath(idx, "empty").Ino]; ok {
		t.Error("an empty file has chunks")
	}
}
