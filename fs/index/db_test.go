package index

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// testDB is a metadata database of its own, closed when t ends.
func testDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

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
			1: {{"a", 2, TypeReg}, {"b", 2, TypeReg}, {"dir", 3, TypeDir}},
			3: {{"gone", 4, TypeChar}},
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
	db := testDB(t)
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
	if i := l.Info(); i.Version != indexVersion || i.Entries != 4 || i.Chunks != 2 || i.BlobSize != 100 || i.Format != "test" || !i.HasXattrs {
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
	if _, found, err := l.Lookup(1, strings.Repeat("a", 10000)); found || err != nil {
		t.Fatalf("Lookup of an overlong name: %v %v", found, err)
	}
	ents, err := l.ReadDir(1)
	if want := dbTestIndex().Children[1]; err != nil || !reflect.DeepEqual(ents, want) {
		t.Fatalf("ReadDir = %v %v, want %v", ents, err, want)
	}
	d, _ := l.Entry(3)
	if string(d.Xattrs["trusted.overlay.opaque"]) != "y" {
		t.Fatalf("xattrs lost: %+v", d)
	}
	// Directories and other entries are kept apart; both read back.
	for _, want := range dbTestIndex().Entries {
		if got, err := l.Entry(want.Ino); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Entry(%d) = %+v %v, want %+v", want.Ino, got, err, want)
		}
	}
	if _, err := l.Entry(5); err == nil {
		t.Error("Entry of an inode that is not in the index")
	}
	if e, found, err := l.Lookup(1, "dir"); err != nil || !found || !reflect.DeepEqual(e, dbTestIndex().Entries[2]) {
		t.Errorf("Lookup dir = %+v %v %v", e, found, err)
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

func TestInfoHasXattrs(t *testing.T) {
	db := testDB(t)
	idx := dbTestIndex()
	idx.Entries[2].Xattrs = nil
	if err := Save(db, "k", idx, 100); err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, "k")
	if err != nil {
		t.Fatal(err)
	}
	if l.Info().HasXattrs || NewMemory(idx, 100).Info().HasXattrs {
		t.Fatalf("HasXattrs without xattrs: stored %+v, memory %+v", l.Info(), NewMemory(idx, 100).Info())
	}
	if !NewMemory(dbTestIndex(), 100).Info().HasXattrs {
		t.Fatal("HasXattrs false with an opaque directory")
	}
}

// TestInfoPlain: an index with no whiteout (0/0 character device) and no
// overlayfs xattr is plain, stored or in memory; either marker alone
// makes it not.
func TestInfoPlain(t *testing.T) {
	db := testDB(t)
	for _, c := range []struct {
		name  string
		edit  func(idx *Index)
		plain bool
	}{
		{"whiteout and opaque", func(*Index) {}, false},
		{"whiteout", func(idx *Index) { idx.Entries[2].Xattrs = nil }, false},
		{"opaque", func(idx *Index) { idx.Entries[3].DevMajor = 1 }, false},
		{"other overlay xattr", func(idx *Index) {
			idx.Entries[2].Xattrs = map[string][]byte{"trusted.overlay.redirect": []byte("/x")}
			idx.Entries[3].DevMinor = 3
		}, false},
		{"plain", func(idx *Index) {
			idx.Entries[2].Xattrs = map[string][]byte{"user.x": []byte("1"), "security.capability": []byte("c")}
			idx.Entries[3].DevMajor, idx.Entries[3].DevMinor = 1, 3
		}, true},
	} {
		idx := dbTestIndex()
		c.edit(idx)
		if err := Save(db, c.name, idx, 100); err != nil {
			t.Fatal(err)
		}
		l, err := Open(db, c.name)
		if err != nil {
			t.Fatal(err)
		}
		if got, mem := l.Info().Plain, NewMemory(idx, 100).Info().Plain; got != c.plain || mem != c.plain {
			t.Errorf("%s: Plain stored %v, in memory %v, want %v", c.name, got, mem, c.plain)
		}
	}
}

// TestOpenOtherVersion: an index stored in another layout (here the JSON
// values of version 1, written by hand, or a later version) is not read
// but answered as not found, so that the caller rebuilds it, and Save
// replaces it.
func TestOpenOtherVersion(t *testing.T) {
	db := testDB(t)
	for _, info := range []string{
		`{"format":"estargz","blobSize":100,"entries":2,"chunks":0,"created":"2024-01-02T03:04:05Z"}`,
		`{"version":2,"format":"estargz","blobSize":100,"entries":2,"chunks":0,"created":"2024-01-02T03:04:05Z"}`,
		`{"version":99,"format":"estargz","blobSize":100,"entries":2,"chunks":0,"created":"2024-01-02T03:04:05Z"}`,
	} {
		err := db.Update(func(tx *bolt.Tx) error {
			layers, err := tx.CreateBucketIfNotExists(bucketLayers)
			if err != nil {
				return err
			}
			lb, err := layers.CreateBucket([]byte("sha256:x"))
			if err != nil {
				return err
			}
			return writeV1(lb, info)
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(db, "sha256:x"); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "version") {
			t.Fatalf("Open of %s: %v, want not found", info, err)
		}
		if err := Save(db, "sha256:x", dbTestIndex(), 100); err != nil {
			t.Fatal(err)
		}
		l, err := Open(db, "sha256:x")
		if err != nil {
			t.Fatal(err)
		}
		if e, err := l.Entry(2); err != nil || !reflect.DeepEqual(e, dbTestIndex().Entries[1]) {
			t.Fatalf("Entry(2) after Save = %+v %v", e, err)
		}
		if ents, err := l.ReadDir(3); err != nil || len(ents) != 1 || ents[0].Type != TypeChar {
			t.Fatalf("ReadDir(3) after Save = %v %v", ents, err)
		}
		if err := Delete(db, "sha256:x"); err != nil {
			t.Fatal(err)
		}
	}
}

// writeV1 writes a two-entry index as version 1 stored it: JSON entries
// and chunks, a bare child ino as directory entry, no version in info.
func writeV1(lb *bolt.Bucket, info string) error {
	put := func(bucket string, key []byte, v any) error {
		b, err := lb.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		js, ok := v.([]byte)
		if !ok {
			if js, err = json.Marshal(v); err != nil {
				return err
			}
		}
		return b.Put(key, js)
	}
	mt := time.Unix(1700000000, 0).UTC()
	return errors.Join(
		lb.Put(keyInfo, []byte(info)),
		put("e", u64(1), Entry{Ino: 1, Type: TypeDir, Mode: 0o755, ModTime: mt}),
		put("e", u64(2), Entry{Ino: 2, Type: TypeReg, Mode: 0o644, Size: 1, ModTime: mt}),
		put("d", append(u64(1), "f"...), u64(2)),
		put("c", append(u64(2), u64(0)...), Chunk{Length: 1, BlobLength: 30, Encoding: EncodingGzip, Digest: digest.FromString("a")}),
	)
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

// TestOpenConvertsVersion2: an index stored in layout version 2 (the same
// values, directories' entries in e) is converted in place, not rebuilt:
// every inode number, entry, name and chunk stays, as a daemon taking
// over an older one's mounts needs.
func TestOpenConvertsVersion2(t *testing.T) {
	db := testDB(t)
	idx := dbTestIndex()
	if err := Save(db, "sha256:x", idx, 100); err != nil {
		t.Fatal(err)
	}
	// Down to version 2.
	err := db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bucketLayers).Bucket([]byte("sha256:x"))
		e, d := lb.Bucket(bucketEntries), lb.Bucket(bucketDirs)
		if err := d.ForEach(func(k, v []byte) error { return e.Put(k, v) }); err != nil {
			return err
		}
		if err := lb.DeleteBucket(bucketDirs); err != nil {
			return err
		}
		var info Info
		if err := json.Unmarshal(lb.Get(keyInfo), &info); err != nil {
			return err
		}
		info.Version = 2
		v, _ := json.Marshal(info)
		return lb.Put(keyInfo, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, "sha256:x")
	if err != nil {
		t.Fatalf("Open of a version 2 index: %v", err)
	}
	if v := l.Info().Version; v != indexVersion {
		t.Fatalf("version %d after Open, want %d", v, indexVersion)
	}
	for _, want := range idx.Entries {
		if e, err := l.Entry(want.Ino); err != nil || !reflect.DeepEqual(e, want) {
			t.Fatalf("Entry(%d) after conversion = %+v, %v; want %+v", want.Ino, e, err, want)
		}
	}
	for dir, kids := range idx.Children {
		got, err := l.ReadDir(dir)
		if err != nil || !reflect.DeepEqual(got, kids) {
			t.Fatalf("ReadDir(%d) after conversion = %v, %v; want %v", dir, got, err, kids)
		}
		for _, k := range kids {
			if e, found, err := l.Lookup(dir, k.Name); err != nil || !found || e.Ino != k.Ino {
				t.Fatalf("Lookup(%d, %q) after conversion = %d %v %v", dir, k.Name, e.Ino, found, err)
			}
		}
	}
	// Directories are in D again: a second Open is plain.
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketLayers).Bucket([]byte("sha256:x")).Bucket(bucketDirs) == nil {
			return errors.New("no D bucket after conversion")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
