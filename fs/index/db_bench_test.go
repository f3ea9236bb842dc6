package index

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// benchLayer stores an index shaped like a real image layer: dirs
// directories of files files each, plus one 1 GiB file of 4 MiB chunks
// (inode 2), and opens its on-disk view.
func benchLayer(b *testing.B, dirs, files int) *Layer {
	b.Helper()
	idx := benchIndex(dirs, files)
	db, err := bolt.Open(filepath.Join(b.TempDir(), "meta.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if err := Save(db, "sha256:bench", idx, 1<<32); err != nil {
		b.Fatal(err)
	}
	l, err := Open(db, "sha256:bench")
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// benchIndex builds an index shaped like a real image layer.
func benchIndex(dirs, files int) *Index {
	mt := time.Unix(1700000000, 0).UTC()
	idx := &Index{Format: "bench", Children: map[uint64][]Dirent{}, Chunks: map[uint64][]Chunk{}}
	idx.Entries = append(idx.Entries, Entry{Ino: 1, Type: TypeDir, Mode: 0o755, ModTime: mt, Nlink: 2})
	const bigChunks = 256
	idx.Entries = append(idx.Entries, Entry{Ino: 2, Type: TypeReg, Mode: 0o644, Size: bigChunks << 22, ModTime: mt, Nlink: 1})
	idx.Children[1] = append(idx.Children[1], Dirent{"big", 2, TypeReg})
	for i := range bigChunks {
		off := int64(i) << 22
		idx.Chunks[2] = append(idx.Chunks[2], Chunk{FileOffset: off, Length: 1 << 22, BlobOffset: off, BlobLength: 1 << 22,
			Encoding: EncodingGzip, Digest: digest.FromString(fmt.Sprint(i))})
	}
	ino := uint64(3)
	for d := range dirs {
		dino := ino
		ino++
		idx.Entries = append(idx.Entries, Entry{Ino: dino, Type: TypeDir, Mode: 0o755, ModTime: mt, Nlink: 2})
		idx.Children[1] = append(idx.Children[1], Dirent{fmt.Sprintf("d%04d", d), dino, TypeDir})
		for f := range files {
			idx.Entries = append(idx.Entries, Entry{Ino: ino, Type: TypeReg, Mode: 0o644, Size: 4096, ModTime: mt, Nlink: 1})
			idx.Children[dino] = append(idx.Children[dino], Dirent{fmt.Sprintf("f%04d", f), ino, TypeReg})
			idx.Chunks[ino] = []Chunk{{Length: 4096, BlobOffset: int64(ino) * 4096, BlobLength: 1500, Encoding: EncodingGzip,
				Digest: digest.FromString(fmt.Sprint("f", ino))}}
			ino++
		}
	}
	return idx
}

// BenchmarkLookup is one FUSE LOOKUP's index work: a name in a directory
// of 100 among 20,000 files.
func BenchmarkLookup(b *testing.B) {
	l := benchLayer(b, 200, 100)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e, found, err := l.Lookup(3+uint64(i%200)*101, fmt.Sprintf("f%04d", i%100))
		if err != nil || !found || e.Type != TypeReg {
			b.Fatalf("lookup %d: %+v %v %v", i, e, found, err)
		}
		i++
	}
}

// BenchmarkEntry is one inode's entry read by number.
func BenchmarkEntry(b *testing.B) {
	l := benchLayer(b, 200, 100)
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		ino := 4 + (i*7919)%20000
		if e, err := l.Entry(ino); err != nil || e.Ino != ino {
			b.Fatalf("entry %d: %+v %v", ino, e, err)
		}
		i++
	}
}

// BenchmarkOpendir is one FUSE OPENDIR's index work: the names of a
// directory of 100 files and the type of each, which the listing carries.
func BenchmarkOpendir(b *testing.B) {
	l := benchLayer(b, 200, 100)
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		kids, err := l.ReadDir(3 + (i%200)*101)
		if err != nil || len(kids) != 100 || kids[99].Type != TypeReg {
			b.Fatalf("readdir %d: %d entries, %v", i, len(kids), err)
		}
		i++
	}
}

// BenchmarkChunks is one 1 MiB FUSE READ's index work on a 1 GiB file.
func BenchmarkChunks(b *testing.B) {
	l := benchLayer(b, 1, 1)
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		off := (i * (1 << 20)) % (1 << 30)
		cs, err := l.Chunks(2, off, 1<<20)
		if err != nil || len(cs) != 1 || cs[0].FileOffset > off {
			b.Fatalf("chunks at %d: %v %v", off, cs, err)
		}
		i++
	}
}

// BenchmarkDecodeEntry compares the stored entry encoding with the JSON
// that version 1 stored, on a typical file entry.
func BenchmarkDecodeEntry(b *testing.B) {
	e := Entry{Ino: 12345, Type: TypeReg, Mode: 0o644, UID: 1000, GID: 1000, Size: 4096, Nlink: 1,
		ModTime: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
	b.Run("binary", func(b *testing.B) {
		v := appendEntry(nil, &e)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeEntry(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		v, err := json.Marshal(&e)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			var got Entry
			if err := json.Unmarshal(v, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
