package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func openTest(t *testing.T, opt Options) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBlobsRoundTripAndVerify(t *testing.T) {
	s := openTest(t, Options{})
	data := []byte("manifest bytes")
	d := digest.FromBytes(data)
	if err := s.Blobs.Put(d, []byte("other bytes")); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Put with wrong content: got %v, want ErrDigestMismatch", err)
	}
	if _, err := s.Blobs.Get(d); !errdefs.IsNotFound(err) {
		t.Fatalf("Get missing: got %v, want not found", err)
	}
	if err := s.Blobs.Put(d, data); err != nil {
		t.Fatal(err)
	}
	got, err := s.Blobs.Get(d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get = %q, %v", got, err)
	}
	// Tamper on disk: Get must refuse and remove it.
	p := filepath.Join(s.Root(), "blobs", "sha256", d.Encoded())
	if err := os.WriteFile(p, []byte("tampered bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Blobs.Get(d); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Get tampered: got %v, want ErrDigestMismatch", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("tampered blob not removed: %v", err)
	}
}

func TestChunksVerifyOnReadBack(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, Options{unpacked: true})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("chunk"), 1000)
	d := digest.FromBytes(data)
	if err := s.Chunks.Put(d, data); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n, ok, err := s.Chunks.ReadAt(d, buf, 5); !ok || err != nil || n != 10 || string(buf) != "chunkchunk" {
		t.Fatalf("ReadAt = %d %v %v %q", n, ok, err, buf)
	}
	s.Close()

	// Corrupt the file while the daemon is down: the next process must
	// detect it on first read-back and report a miss.
	p := filepath.Join(root, "chunks", "sha256", d.Encoded())
	bad := append([]byte{}, data...)
	bad[100] ^= 1
	if err := os.WriteFile(p, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(root, Options{unpacked: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Chunks.Has(d) {
		t.Fatal("cache not rebuilt from disk")
	}
	if _, ok, err := s.Chunks.ReadAt(d, buf, 0); ok || err != nil {
		t.Fatalf("corrupt chunk served: ok=%v err=%v", ok, err)
	}
	if s.Chunks.Has(d) {
		t.Fatal("corrupt chunk still indexed")
	}
}

func TestChunksEvictLeastRecentlyUsed(t *testing.T) {
	s := openTest(t, Options{ChunkCacheBytes: 3000})
	var ds []digest.Digest
	for i := 0; i < 3; i++ {
		data := bytes.Repeat([]byte{byte(i)}, 1000)
		d := digest.FromBytes(data)
		ds = append(ds, d)
		if err := s.Chunks.Put(d, data); err != nil {
			t.Fatal(err)
		}
	}
	// Touch the first so the second is the oldest.
	if _, ok, _ := s.Chunks.ReadAt(ds[0], make([]byte, 1), 0); !ok {
		t.Fatal("chunk 0 missing")
	}
	d3 := digest.FromBytes(bytes.Repeat([]byte{9}, 1000))
	if err := s.Chunks.Put(d3, bytes.Repeat([]byte{9}, 1000)); err != nil {
		t.Fatal(err)
	}
	if s.Chunks.Has(ds[1]) || !s.Chunks.Has(ds[0]) || !s.Chunks.Has(ds[2]) || !s.Chunks.Has(d3) {
		t.Fatalf("wrong eviction: %v", s.Chunks.Stats())
	}
	if st := s.Chunks.Stats(); st.Bytes != 3000 || st.Chunks != 3 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestLowerLimitHoldsAtOpen: a store opened with a limit lower than what
// its cache holds (cache_size lowered between daemons) is within it at
// once, not from the next write on.
func TestLowerLimitHoldsAtOpen(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, Options{ChunkCacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		data := bytes.Repeat([]byte{byte(i)}, 100<<10) // large enough to be a file of its own
		if err := s.Chunks.Put(digest.FromBytes(data), data); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Chunks.Stats(); st.Bytes < 800<<10 {
		t.Fatalf("stats %+v: the test needs the chunks kept", st)
	}
	s.Close()
	s, err = Open(root, Options{ChunkCacheBytes: 300 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := s.Chunks.Stats(); st.Bytes > 300<<10 || st.Bytes == 0 {
		t.Errorf("reopened with a 300 KiB limit: %+v", st)
	}
}

func TestOpenTwiceFailsClearly(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(root, Options{}); err == nil {
		t.Fatal("second Open of a locked store succeeded")
	}
}
