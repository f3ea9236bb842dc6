package index

import (
	"archive/tar"
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	bolt "go.etcd.io/bbolt"
)

func TestPrefetchLandmarkEndsPrioritizedRegion(t *testing.T) {
	mt := time.Unix(1700000000, 0)
	var entries []tarEntry
	for i, name := range []string{"a", "b", "c", "d"} {
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: mt}, body: randomBytes(uint64(i+1), 64<<10)})
	}
	tarBytes := writeTar(t, entries)

	plain, plainTOC := buildEStargz(t, tarBytes)
	idx, err := ReadEStargz(context.Background(), bytes.NewReader(plain), int64(len(plain)), plainTOC)
	if err != nil {
		t.Fatal(err)
	}
	if idx.PrefetchEnd != 0 {
		t.Fatalf("layer without prioritized files: PrefetchEnd = %d, want 0", idx.PrefetchEnd)
	}

	blob, toc := buildEStargz(t, tarBytes, estargz.WithPrioritizedFiles([]string{"c", "a"}))
	idx, err = ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), toc)
	if err != nil {
		t.Fatal(err)
	}
	if idx.PrefetchEnd <= 0 {
		t.Fatalf("PrefetchEnd = %d, want the landmark's offset", idx.PrefetchEnd)
	}
	for name, inRegion := range map[string]bool{"a": true, "c": true, "b": false, "d": false} {
		e := lookupPath(idx, name)
		if e == nil {
			t.Fatalf("%s missing", name)
		}
		off := idx.Chunks[e.Ino][0].BlobOffset
		if (off < idx.PrefetchEnd) != inRegion {
			t.Errorf("%s at blob offset %d, prefetch region ends at %d; want in region = %v", name, off, idx.PrefetchEnd, inRegion)
		}
	}
	if lookupPath(idx, estargz.PrefetchLandmark) != nil {
		t.Error("the landmark is visible in the tree")
	}

	// Stored and reopened, and in the in-memory view, the end is kept.
	db, err := bolt.Open(t.TempDir()+"/meta.db", 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Save(db, "l", idx, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, "l")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Info().PrefetchEnd; got != idx.PrefetchEnd {
		t.Errorf("stored PrefetchEnd = %d, want %d", got, idx.PrefetchEnd)
	}
	if got := NewMemory(idx, int64(len(blob))).Info().PrefetchEnd; got != idx.PrefetchEnd {
		t.Errorf("in-memory PrefetchEnd = %d, want %d", got, idx.PrefetchEnd)
	}

	idx.PrefetchEnd = int64(len(blob)) + 1
	if err := idx.Validate(int64(len(blob))); err == nil {
		t.Error("a prefetch end past the blob passed validation")
	}
}
