package index

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

func dbTestIndex() *Index {
	mt := time.Unix(1700000000, 123).UTC()
	return &Index{
		Format: "test",
		Entries: []Entry{
			{Ino: 1, Type: TypeDir, Mode: 0o755, ModTime: mt},
			{Ino: 2, Type: TypeReg, Mode: 0o4755, UID: 70000, Size: 10, ModTime: mt, Nlink: 2},
			{Ino: 3, Type: TypeDir, Mode: 0o1777, ModTime: mt, Xattrs: map[string][]byte{"trusted.overlay.opaque": []byte("y")}},
			{Ino: 4, Type: TypeChar, ModTime: mt},
		},
		Children: map[uint64][]Dirent{
			1: {{"a", 2}, {"b", 2}, {"dir", 3}},
			3: {{"gone", 4}},
		},
		Chunks: map[uint64][]Chunk{
			2: {
				{FileOffset: 0, Length: 4, BlobOffset: 0, BlobLength: 30, Encoding: EncodingGzip, Digest: digest.FromString("a")},
				{FileOffset: 4, Length: 6, BlobOffset: 30, BlobLength: 40, Encoding: EncodingGzip, Digest: digest.FromString("b")},
			},
		},
	}
}

func TestSaveOpenLookup(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(db, "sha256:x"); !errdefs.IsNotFound(err) {
		t.Fatalf("Open of missing index: %v", err)
	}
	if err := Save(db, "sha256:x", dbTestIndex(), 100); err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, "sha256:x")
	if err != nil {
		t.Fatal(err)
	}
	if i := l.Info(); i.Entries != 4 || i.Chunks != 2 || i.BlobSize != 100 || i.Format != "test" {
		t.Fatalf("info = %+v", i)
	}
	e, found, err := l.Lookup(1, "b")
	if err != nil || !found || e.Ino != 2 || e.Mode != 0o4755 || e.UID != 70000 || !e.ModTime.Equal(time.Unix(1700000000, 123)) {
		t.Fatalf("Lookup b = %+v %v %v", e, found, err)
	}
	if _, found, _ := l.Lookup(1, "missing"); found {
		t.Fatal("found a missing name")
	}
	if _, found, _ := l.Lookup(3, "a"); found {
		t.Fatal("name found in the wrong directory")
	}
	ents, err := l.ReadDir(1)
	if err != nil || len(ents) != 3 || ents[2].Name != "dir" {
		t.Fatalf("ReadDir = %v %v", ents, err)
	}
	d, _ := l.Entry(3)
	if string(d.Xattrs["trusted.overlay.opaque"]) != "y" {
		t.Fatalf("xattrs lost: %+v", d)
	}
	for _, tc := range []struct {
		off, n int64
		want   []int64
	}{
		{0, 1, []int64{0}}, {3, 2, []int64{0, 4}}, {5, 100, []int64{4}}, {9, 1, []int64{4}}, {10, 5, nil},
	} {
		cs, err := l.Chunks(2, tc.off, tc.n)
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, c := range cs {
			got = append(got, c.FileOffset)
		}
		if len(got) != len(tc.want) || (len(got) > 0 && (got[0] != tc.want[0] || got[len(got)-1] != tc.want[len(tc.want)-1])) {
			t.Errorf("Chunks(%d,%d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
	if cs, _ := l.Chunks(3, 0, 10); len(cs) != 0 {
		t.Fatalf("chunks of a directory: %v", cs)
	}
	if err := Delete(db, "sha256:x"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(db, "sha256:x"); !errdefs.IsNotFound(err) {
		t.Fatalf("index survived Delete: %v", err)
	}
}

// BenchmarkSave stores an index of 20,000 small files and one 1 GiB file:
// the work a first mount does per layer after parsing the TOC.
func BenchmarkSave(b *testing.B) {
	idx := benchIndex(100, 200)
	db, err := bolt.Open(filepath.Join(b.TempDir(), "meta.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := Save(db, "sha256:bench", idx, 1<<32); err != nil {
			b.Fatal(err)
		}
	}
}
