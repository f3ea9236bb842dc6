package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// newGzipLayer builds a plain gzip layer of files (random content, so
// spans are about as long compressed as not) and a Content reading it
// through its index, with nothing cached.
func newGzipLayer(t *testing.T, names []string, sizes []int) *testLayer {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	files := map[string][]byte{}
	for i, name := range names {
		data := randomContent(uint64(i+100), sizes[i])
		files[name] = data
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBuf.Bytes())
	zw.Close()
	blob := gz.Bytes()
	idx, err := index.Read(context.Background(), bytes.NewReader(blob), index.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}, index.WithGzip())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	view := index.NewMemory(idx, int64(len(blob)))
	mb := &memBlob{data: blob}
	content := NewContent("sha256:test", view, mb, st.Chunks)
	t.Cleanup(content.Close)
	return &testLayer{content: content, blob: mb, files: files, view: view, cache: st.Chunks}
}

// TestGzipReadFetchesOneSpan: a small file of a plain gzip layer is read
// with one range request, of the span that holds it, and the other files
// of that span come with it.
func TestGzipReadFetchesOneSpan(t *testing.T) {
	var names []string
	var sizes []int
	for i := range 300 {
		names = append(names, fmt.Sprintf("dir/f%03d", i))
		sizes = append(sizes, 40<<10)
	}
	l := newGzipLayer(t, names, sizes) // 12 MiB: three spans
	target := "dir/f150"
	cs, err := l.view.Chunks(l.entry(t, target).Ino, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	l.read(t, target, 0, 4096)
	l.settle()
	calls, n := l.blob.fetched()
	if calls != 1 || n != cs[0].BlobLength {
		t.Errorf("%d fetches of %d bytes, want 1 of the span's %d", calls, n, cs[0].BlobLength)
	}
	l.blob.reset()
	// Every file of the span is cached now: reading them fetches nothing.
	inSpan := 0
	for _, name := range names {
		ch, _ := l.view.Chunks(l.entry(t, name).Ino, 0, 40<<10)
		if len(ch) == 1 && ch[0].BlobOffset == cs[0].BlobOffset {
			inSpan++
			l.read(t, name, 0, 40<<10)
		}
	}
	if calls, _ := l.blob.fetched(); calls != 0 || inSpan < 50 {
		t.Errorf("reading the %d files of the span fetched %d times", inSpan, calls)
	}
	// A read across spans is right too.
	for _, name := range names {
		l.read(t, name, 0, 40<<10)
	}
}

// TestGzipCorruptSpanIsAnError: a span that does not decode to its
// chunks' digests is an error for the reader, and nothing is cached.
func TestGzipCorruptSpanIsAnError(t *testing.T) {
	l := newGzipLayer(t, []string{"a", "b"}, []int{3 << 20, 3 << 20})
	l.blob.corrupt = true
	e := l.entry(t, "b")
	buf := make([]byte, 4096)
	if _, err := l.content.ReadAt(context.Background(), e, buf, 1<<20); err == nil {
		t.Fatal("a corrupt span was read")
	} else if !errors.Is(err, index.ErrDigestMismatch) && !errors.Is(err, index.ErrInvalid) {
		t.Logf("error: %v", err) // the decoder's own error: also refused
	}
	l.settle()
	for _, name := range []string{"a", "b"} {
		cs, _ := l.view.Chunks(l.entry(t, name).Ino, 0, 3<<20)
		for _, c := range cs {
			if l.cache.Has(c.Digest) {
				t.Errorf("%s: chunk at %d cached from a corrupt span", name, c.FileOffset)
			}
		}
	}
	l.blob.corrupt = false
	l.read(t, "b", 1<<20, 4096)
}
