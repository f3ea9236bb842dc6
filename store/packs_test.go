package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// smallChunk is chunk i of n bytes, different for every i.
func smallChunk(i, n int) ([]byte, digest.Digest) {
	data := bytes.Repeat([]byte(fmt.Sprintf("chunk %06d|", i)), n/13+1)[:n]
	return data, digest.FromBytes(data)
}

func packFiles(t *testing.T, s *Store) (packs, idxs int) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Root(), "packs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".pack":
			packs++
		case ".idx":
			idxs++
		}
	}
	return packs, idxs
}

func readChunk(t *testing.T, s *Store, d digest.Digest, n int) ([]byte, bool) {
	t.Helper()
	buf := make([]byte, n)
	got, ok, err := s.Chunks.ReadAt(d, buf, 0)
	if err != nil {
		t.Fatalf("ReadAt %s: %v", d, err)
	}
	return buf[:got], ok
}

// TestSmallChunksArePacked stores small chunks in one pack, not as files
// of their own, and reads them back at any offset; big chunks stay files.
func TestSmallChunksArePacked(t *testing.T) {
	s := openTest(t, Options{})
	var ds []digest.Digest
	var datas [][]byte
	for i := range 200 {
		data, d := smallChunk(i, 100+i*37)
		if err := s.Chunks.Put(d, data); err != nil {
			t.Fatal(err)
		}
		ds, datas = append(ds, d), append(datas, data)
	}
	big := bytes.Repeat([]byte("big"), packMaxChunk)
	if err := s.Chunks.Put(digest.FromBytes(big), big); err != nil {
		t.Fatal(err)
	}
	if err := s.Chunks.Put(ds[3], datas[3]); err != nil { // again: stored once
		t.Fatal(err)
	}
	if p, i := packFiles(t, s); p != 1 || i != 1 {
		t.Fatalf("%d packs and %d indexes, want one of each", p, i)
	}
	files, _ := os.ReadDir(filepath.Join(s.Root(), "chunks", "sha256"))
	if len(files) != 1 {
		t.Fatalf("%d chunk files, want only the big chunk's", len(files))
	}
	for i, d := range ds {
		if !s.Chunks.Has(d) {
			t.Fatalf("chunk %d not cached", i)
		}
		buf := make([]byte, 20)
		n, ok, err := s.Chunks.ReadAt(d, buf, 7)
		if err != nil || !ok || n != 20 || !bytes.Equal(buf, datas[i][7:27]) {
			t.Fatalf("chunk %d at 7: %q %v %v, want %q", i, buf[:n], ok, err, datas[i][7:27])
		}
		if _, _, err := s.Chunks.ReadAt(d, make([]byte, 10), int64(len(datas[i])-5)); err == nil {
			t.Fatalf("chunk %d: a read past its end succeeded", i)
		}
	}
	if _, err := s.Chunks.Open(ds[0]); !errdefs.IsNotFound(err) {
		t.Fatalf("Open of a packed chunk: %v, want not found (no file of its own)", err)
	}
	if err := s.Chunks.Verify(ds[0]); err != nil {
		t.Fatal(err)
	}
	if st := s.Chunks.Stats(); st.Chunks != 201 || st.Packs != 1 {
		t.Fatalf("stats %+v, want 201 chunks in 1 pack", st)
	}
	// A whole file assembled from packed chunks.
	parts := []Part{{ds[5], int64(len(datas[5]))}, {ds[9], int64(len(datas[9]))}}
	f, err := s.Files.Open(assemble(t, s, parts))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); !bytes.Equal(got, append(append([]byte{}, datas[5]...), datas[9]...)) {
		t.Fatal("whole file from packed chunks has the wrong content")
	}
}

// TestPacksAfterRestart reads what an earlier process packed, hashing each
// chunk before serving it: corrupt bytes are a miss, index entries past
// the pack's end (a torn write) and unfinished ones are skipped, junk in
// the directory is removed, and new chunks go to a new pack.
func TestPacksAfterRestart(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	var datas [][]byte
	for i := range 10 {
		data, d := smallChunk(i, 1000)
		if err := s.Chunks.Put(d, data); err != nil {
			t.Fatal(err)
		}
		ds, datas = append(ds, d), append(datas, data)
	}
	s.Close()

	dir := filepath.Join(root, "packs")
	pack := filepath.Join(dir, "0.pack")
	b, err := os.ReadFile(pack)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, datas[4])
	b[at+10] ^= 1                                                     // chunk 4 corrupt
	if err := os.WriteFile(pack, b[:len(b)-500], 0o600); err != nil { // chunk 9 torn
		t.Fatal(err)
	}
	idx, err := os.OpenFile(filepath.Join(dir, "0.idx"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	idx.Write(make([]byte, packIndexEntry)) // reserved, never written
	idx.Write([]byte{1, 2, 3})              // torn entry
	idx.Close()
	for _, junk := range []string{"x.pack", "7.idx", "../escape", "sub"} {
		if junk == "sub" {
			os.Mkdir(filepath.Join(dir, junk), 0o700)
			continue
		}
		os.WriteFile(filepath.Join(dir, filepath.Base(junk)), []byte("junk"), 0o600)
	}

	s, err = Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, d := range ds {
		got, ok := readChunk(t, s, d, len(datas[i]))
		switch i {
		case 4, 9:
			if ok || s.Chunks.Has(d) {
				t.Fatalf("chunk %d (corrupt or torn) served or still cached", i)
			}
		default:
			if !ok || !bytes.Equal(got, datas[i]) {
				t.Fatalf("chunk %d: ok %v, %d bytes", i, ok, len(got))
			}
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("packs dir holds %d entries after Open, want 0.pack and 0.idx only", len(ents))
	}
	data, d := smallChunk(100, 1000)
	if err := s.Chunks.Put(d, data); err != nil {
		t.Fatal(err)
	}
	if p, _ := packFiles(t, s); p != 2 {
		t.Fatalf("%d packs, want a new one for this process's chunks", p)
	}
	if got, ok := readChunk(t, s, d, 1000); !ok || !bytes.Equal(got, data) {
		t.Fatal("chunk of the new pack not read back")
	}
}

// TestPacksEvictWhole keeps a cache of packs within its limit by evicting
// the least recently used pack, files and chunks together.
func TestPacksEvictWhole(t *testing.T) {
	const limit = 64 * 2048 // packs of 2 KiB: four chunks of 500 bytes
	s := openTest(t, Options{ChunkCacheBytes: limit})
	var ds []digest.Digest
	var datas [][]byte
	put := func(i int) {
		data, d := smallChunk(i, 500)
		if err := s.Chunks.Put(d, data); err != nil {
			t.Fatal(err)
		}
		ds, datas = append(ds, d), append(datas, data)
	}
	for i := range 8 {
		put(i)
	}
	for i := 8; i < 400; i++ {
		// Chunk 0's pack read all along: it stays.
		if _, ok := readChunk(t, s, ds[0], 500); !ok {
			t.Fatalf("chunk 0 evicted after %d chunks though read all along", i)
		}
		put(i)
	}
	st := s.Chunks.Stats()
	if st.Bytes > limit {
		t.Fatalf("cache %d bytes over its limit %d", st.Bytes, limit)
	}
	if p, i := packFiles(t, s); p != st.Packs || i != st.Packs || p < 10 {
		t.Fatalf("%d pack and %d index files for %d packs", p, i, st.Packs)
	}
	if s.Chunks.Has(ds[5]) || !s.Chunks.Has(ds[1]) || !s.Chunks.Has(ds[399]) {
		t.Fatalf("wrong packs evicted: chunk 5 %v, 1 %v, 399 %v", s.Chunks.Has(ds[5]), s.Chunks.Has(ds[1]), s.Chunks.Has(ds[399]))
	}
	held := 0
	for i, d := range ds {
		if got, ok := readChunk(t, s, d, 500); ok {
			held++
			if !bytes.Equal(got, datas[i]) {
				t.Fatalf("chunk %d has the wrong bytes", i)
			}
		}
	}
	if held != st.Chunks {
		t.Fatalf("%d chunks readable, stats say %d", held, st.Chunks)
	}
}

// TestPacksConcurrently puts and reads chunks from many goroutines while
// packs are evicted (run with -race).
func TestPacksConcurrently(t *testing.T) {
	s := openTest(t, Options{ChunkCacheBytes: 64 * 4096})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				data, d := smallChunk(i*3+g%3, 700) // goroutines share chunks
				if err := s.Chunks.Put(d, data); err != nil {
					errs <- err
					return
				}
				buf := make([]byte, 700)
				if n, ok, err := s.Chunks.ReadAt(d, buf, 0); err != nil {
					errs <- err
					return
				} else if ok && (n != 700 || !bytes.Equal(buf, data)) {
					errs <- errors.New("wrong bytes read back")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st := s.Chunks.Stats(); st.Bytes > 64*4096 {
		t.Fatalf("cache over its limit: %+v", st)
	}
}

// TestPackWriteFailureCountsNothing: a chunk the pack could not take (a
// full disk) counts nothing in the cache's use and takes no room in the
// pack, so that failures do not grow the use past what is stored, start
// empty packs, or push real chunks out.
func TestPackWriteFailureCountsNothing(t *testing.T) {
	s := openTest(t, Options{})
	data, d := smallChunk(0, 1000)
	if err := s.Chunks.Put(d, data); err != nil {
		t.Fatal(err)
	}
	l := s.Chunks.lru
	l.mu.Lock()
	p := l.active
	size, entries := p.size, p.entries
	l.mu.Unlock()
	used := s.Chunks.Stats().Bytes
	// Writes to the pack fail from here on, as on a full disk.
	ro, err := os.Open(p.f.Name())
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	good := p.f
	p.f = ro
	p.mu.Unlock()
	for i := 1; i <= 100; i++ {
		data, d := smallChunk(i, 1000)
		if err := s.Chunks.Put(d, data); err == nil {
			t.Fatal("a chunk was stored in a pack that cannot be written")
		}
	}
	if got := s.Chunks.Stats().Bytes; got != used {
		t.Errorf("cache use %d after 100 failed writes, %d before", got, used)
	}
	l.mu.Lock()
	same := l.active == p && p.size == size && p.entries == entries
	l.mu.Unlock()
	if !same {
		t.Errorf("the failed writes took room in the pack or started another")
	}
	p.mu.Lock()
	p.f = good
	p.mu.Unlock()
	ro.Close()
	if got, ok := readChunk(t, s, d, len(data)); !ok || !bytes.Equal(got, data) {
		t.Error("the chunk stored before the failures is gone")
	}
}
