package fs

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// BenchmarkWarmSequentialRead is the warm sequential read of a large file
// whose chunks are all cached, with the page cache dropped before every
// read (as `make bench` measures it): 1 MiB reads of a 256 MiB file,
// through the daemon, through FUSE passthrough of its whole file, and
// straight from that whole file on local disk. Root only (FUSE, and
// /proc/sys/vm/drop_caches). Compare the MB/s of the three:
//
//	go test -run '^$' -bench WarmSequentialRead -benchtime 5x ./fs/
func BenchmarkWarmSequentialRead(b *testing.B) {
	requireRoot(b)
	const chunk, chunks = 4 << 20, 64
	cf := newCachedFile(b, chunk, chunks, 2)
	st, idx, file, parts := cf.st, cf.idx, cf.file, cf.parts
	view := index.NewMemory(idx, chunk*chunks)
	whole := assembleForBench(b, st, parts)

	b.Run("direct", func(b *testing.B) { benchRead(b, whole, file.Size) })
	b.Run("daemon", func(b *testing.B) {
		dir := mountForBench(b, view, NewContent("sha256:bench", view, unreachableBlob{}, st.Chunks))
		benchRead(b, filepath.Join(dir, "f"), file.Size)
	})
	b.Run("passthrough", func(b *testing.B) {
		content := NewContent("sha256:bench", view, unreachableBlob{}, st.Chunks, WithWholeFiles(st.Files))
		dir := mountForBench(b, view, content)
		opens := counterValue(metricPassthroughOpens)
		benchRead(b, filepath.Join(dir, "f"), file.Size)
		if counterValue(metricPassthroughOpens) == opens || counterValue(metricPassthroughFallbackReads) > 0 {
			b.Fatal("the file was not read by passthrough")
		}
	})
}

// assembleForBench writes the whole file of parts and returns its path.
func assembleForBench(b *testing.B, st *store.Store, parts []store.Part) string {
	w, err := st.Files.NewWriter(parts)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	for range parts {
		if err := w.CopyNext(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		b.Fatal(err)
	}
	return filepath.Join(st.Root(), "files", "sha256", w.Key().Encoded())
}

func mountForBench(b *testing.B, view View, content *Content) string {
	dir := b.TempDir()
	m, err := MountLayer(dir, view, content, MountConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		m.Unmount()
		content.Close()
	})
	if content.whole != nil && !m.Passthrough() {
		b.Skip("FUSE passthrough unavailable here")
	}
	return dir
}

// benchRead reads path sequentially with 1 MiB reads, from disk: every
// iteration starts with the page cache dropped.
func benchRead(b *testing.B, path string, size int64) {
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	for range b.N {
		b.StopTimer()
		unix.Sync()
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		for {
			got, err := f.Read(buf)
			n += int64(got)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
		if n != size {
			b.Fatalf("read %d bytes of %d", n, size)
		}
	}
}
