package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// putParts caches n chunks of size bytes each and returns them as the
// parts of one file, with the file's content.
func putParts(t *testing.T, s *Store, n, size int) ([]Part, []byte) {
	t.Helper()
	var parts []Part
	var all []byte
	for i := 0; i < n; i++ {
		data := bytes.Repeat([]byte{byte('a' + i)}, size)
		d := digest.FromBytes(data)
		if err := s.Chunks.Put(d, data); err != nil {
			t.Fatal(err)
		}
		parts = append(parts, Part{Digest: d, Length: int64(size)})
		all = append(all, data...)
	}
	return parts, all
}

func assemble(t *testing.T, s *Store, parts []Part) digest.Digest {
	t.Helper()
	w, err := s.Files.NewWriter(parts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for range parts {
		if err := w.CopyNext(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return w.Key()
}

func readAll(t *testing.T, f *os.File) []byte {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tmpEntries(t *testing.T, s *Store) []os.DirEntry {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Root(), "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

func TestFilesAssembleFromChunks(t *testing.T) {
	s := openTest(t, Options{unpacked: true})
	parts, want := putParts(t, s, 3, 1000)
	key := assemble(t, s, parts)
	if key != FileKey(parts) {
		t.Fatalf("writer key %s, FileKey %s", key, FileKey(parts))
	}
	f, err := s.Files.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); !bytes.Equal(got, want) {
		t.Fatalf("whole file has %d bytes, not the chunks' content", len(got))
	}
	if st := s.Chunks.Stats(); st.Files != 1 || st.Chunks != 3 || st.Bytes != 6000 {
		t.Fatalf("stats = %+v, want 3 chunks and 1 file counted together", st)
	}
	if len(tmpEntries(t, s)) != 0 {
		t.Fatal("temporary file left after commit")
	}
}

func TestFilesVerifyAfterRestart(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, Options{unpacked: true})
	if err != nil {
		t.Fatal(err)
	}
	good, wantGood := putParts(t, s, 2, 1000)
	bad := []Part{good[1], good[0]}
	goodKey, badKey := assemble(t, s, good), assemble(t, s, bad)
	s.Close()

	p := filepath.Join(root, "files", "sha256", badKey.Encoded())
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[1500] ^= 1
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}

	s, err = Open(root, Options{unpacked: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, k := range []digest.Digest{goodKey, badKey} {
		if _, err := s.Files.Open(k); !errors.Is(err, ErrUnverified) {
			t.Fatalf("Open of a file left by another process: %v, want ErrUnverified", err)
		}
	}
	if err := s.Files.Verify(context.Background(), bad); !errors.Is(err, ErrDigestMismatch) || !errdefs.IsNotFound(err) {
		t.Fatalf("Verify of a corrupted file: %v, want ErrDigestMismatch and not found", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) || s.Files.Has(badKey) {
		t.Fatalf("corrupt whole file kept: %v", err)
	}
	if err := s.Files.Verify(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	f, err := s.Files.Open(goodKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, f), wantGood) {
		t.Fatal("verified file has other bytes")
	}
}

func TestFileWriterLeavesNothingUncommitted(t *testing.T) {
	s := openTest(t, Options{unpacked: true})
	parts, _ := putParts(t, s, 3, 1000)
	key := FileKey(parts)

	// Abandoned half way.
	w, err := s.Files.NewWriter(parts)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.CopyNext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil {
		t.Fatal("Commit of 1 part of 3 succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.CopyNext(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("CopyNext after cancel: %v", err)
	}
	w.Close()
	if n := len(tmpEntries(t, s)); n != 0 || s.Files.Has(key) {
		t.Fatalf("after Close: %d temporary files, cached %v", n, s.Files.Has(key))
	}

	// A chunk evicted before its turn.
	p := filepath.Join(s.Root(), "chunks", "sha256", parts[2].Digest.Encoded())
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	w, err = s.Files.NewWriter(parts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 2 {
		if err := w.CopyNext(context.Background()); err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
	}
	if err := w.CopyNext(context.Background()); !errdefs.IsNotFound(err) {
		t.Fatalf("copying a missing chunk: %v, want not found", err)
	}
}

func TestFilesShareTheChunkLimit(t *testing.T) {
	s := openTest(t, Options{ChunkCacheBytes: 7500})
	old := bytes.Repeat([]byte("old"), 1000)
	if err := s.Chunks.Put(digest.FromBytes(old), old); err != nil {
		t.Fatal(err)
	}
	parts, _ := putParts(t, s, 2, 500)
	more := bytes.Repeat([]byte("more"), 750)
	if err := s.Chunks.Put(digest.FromBytes(more), more); err != nil {
		t.Fatal(err)
	}
	// 7000 bytes of chunks; assembling reads (so refreshes) the file's
	// chunks, and its 1000 bytes push the least recently used chunk out.
	key := assemble(t, s, parts)
	if st := s.Chunks.Stats(); st.Bytes > 7500 || st.Files != 1 {
		t.Fatalf("cache over its limit: %+v", st)
	}
	if s.Chunks.Has(digest.FromBytes(old)) || !s.Files.Has(key) || !s.Chunks.Has(parts[0].Digest) {
		t.Fatalf("eviction did not take the least recently used entry: %+v", s.Chunks.Stats())
	}

	big, _ := putParts(t, s, 1, 2000)
	if _, err := s.Files.NewWriter(big); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("a file over a quarter of the limit: %v, want resource exhausted", err)
	}
}
