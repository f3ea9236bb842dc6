package fs

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// newGzipLayer builds a plain gzip layer of files (random content, so
// spans are about as long compressed as not) and a Content reading it
// through its index, with nothing cached.
func newGzipLayer(t *testing.T, names []string, sizes []int) *testLayer {
	t.Helper()
	contents := make([][]byte, len(names))
	for i := range names {
		contents[i] = randomContent(uint64(i+100), sizes[i])
	}
	return newGzipLayerOf(t, names, contents)
}

// newGzipLayerOf is newGzipLayer with the files' contents given.
func newGzipLayerOf(t *testing.T, names []string, contents [][]byte) *testLayer {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	files := map[string][]byte{}
	for i, name := range names {
		data := contents[i]
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

// sameSizeFiles names n files prefix000, prefix001, ... of size bytes.
func sameSizeFiles(prefix string, n, size int) ([]string, []int) {
	names, sizes := make([]string, n), make([]int, n)
	for i := range n {
		names[i], sizes[i] = fmt.Sprintf("%s%03d", prefix, i), size
	}
	return names, sizes
}

// TestGzipReadFetchesSpanStart: a small file of a plain gzip layer is
// read with one range request, of the start of the span that holds it up
// to the file (the files before it come with it), and the next read into
// that span fetches the span's rest, once, without its start again.
func TestGzipReadFetchesSpanStart(t *testing.T) {
	names, sizes := sameSizeFiles("dir/f", 300, 10<<10)
	l := newGzipLayer(t, names, sizes) // 3 MiB: three spans
	// The target: a file about a fifth into its span.
	target, cs := "", []index.Chunk(nil)
	for _, name := range names[100:] {
		ch, err := l.view.Chunks(l.entry(t, name).Ino, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if ch[0].Inner >= 200<<10 {
			target, cs = name, ch
			break
		}
	}
	if target == "" {
		t.Fatal("no file a fifth into a span")
	}
	bo := cs[0].BlobOffset
	span, err := l.view.ChunksInBlob(bo, bo+1, maxSpanChunks)
	if err != nil {
		t.Fatal(err)
	}
	spanLen := streamLen(span)
	if cs[0].BlobLength >= spanLen*3/4 {
		t.Fatalf("%s: %d bytes to fetch of its span's %d: not a start of it", target, cs[0].BlobLength, spanLen)
	}
	l.read(t, target, 0, 4096)
	l.settle()
	calls, n := l.blob.fetched()
	if calls != 1 || n != cs[0].BlobLength {
		t.Errorf("%d fetches of %d bytes, want 1 of the span's first %d", calls, n, cs[0].BlobLength)
	}
	l.blob.reset()
	// Every file of the span before it is cached now.
	var after []string
	for _, name := range names {
		ch, _ := l.view.Chunks(l.entry(t, name).Ino, 0, 10<<10)
		switch {
		case len(ch) != 1 || ch[0].BlobOffset != bo:
		case ch[0].BlobLength <= cs[0].BlobLength:
			l.read(t, name, 0, 10<<10)
		default:
			after = append(after, name)
		}
	}
	if calls, _ := l.blob.fetched(); calls != 0 {
		t.Errorf("reading the files of the span's start fetched %d times", calls)
	}
	if len(after) < 20 {
		t.Fatalf("%d files after %s in its span", len(after), target)
	}
	// The last file of the span first: the rest of the span comes in one
	// fetch, and nothing of it again.
	for _, name := range slices.Concat(after[len(after)-1:], after) {
		l.read(t, name, 0, 10<<10)
	}
	l.settle()
	if calls, n := l.blob.fetched(); calls != 1 || n != spanLen-cs[0].BlobLength {
		t.Errorf("reading the rest of the span: %d fetches of %d bytes, want 1 of %d", calls, n, spanLen-cs[0].BlobLength)
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

// TestGzipConcurrentReadsFetchEachByteOnce: reads further into a span
// while a shorter start of it is on its way wait for it and fetch only
// what it lacks: no byte of the blob is fetched twice, and every read
// gets its file's bytes.
func TestGzipConcurrentReadsFetchEachByteOnce(t *testing.T) {
	names, sizes := sameSizeFiles("f", 100, 8<<10)
	l := newGzipLayer(t, names, sizes) // 800 KiB: one span
	l.blob.hold, l.blob.free, l.blob.held = make(chan struct{}), -1, make(chan struct{}, 64)
	read := func(name string) error {
		e := l.entry(t, name)
		buf := make([]byte, e.Size)
		if _, err := l.content.ReadAt(context.Background(), e, buf, 0); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if !bytes.Equal(buf, l.files[name]) {
			return fmt.Errorf("%s: wrong bytes", name)
		}
		return nil
	}
	errs := make(chan error, 3)
	go func() { errs <- read("f010") }()
	<-l.blob.held // its fetch is on its way, and stays there
	// Each claims a longer fetch of the span, after the one before it.
	// Far enough apart (over 256 KiB) not to look like a walk in order,
	// which would take the rest of the span at once.
	for depth, name := range []string{"f055", "f099"} {
		go func() { errs <- read(name) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l.content.mu.Lock()
			sf := l.content.pending[0]
			l.content.mu.Unlock()
			for range depth + 1 {
				if sf != nil {
					sf = sf.after
				}
			}
			if sf != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the read of %s did not wait for the span's start", name)
			}
			time.Sleep(time.Millisecond)
		}
	}
	close(l.blob.hold)
	for range 3 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	l.settle()
	var got []remote.Range
	for _, f := range l.blob.fetches {
		got = append(got, f...)
	}
	slices.SortFunc(got, func(a, b remote.Range) int { return cmp.Compare(a.Off, b.Off) })
	for i := 1; i < len(got); i++ {
		if got[i].Off < got[i-1].Off+got[i-1].Len {
			t.Errorf("fetched %+v and %+v: bytes fetched twice", got[i-1], got[i])
		}
	}
	if len(got) < 2 {
		t.Errorf("fetches %+v: the span's start was not fetched on its own", got)
	}
}

// TestGzipWalkFetchesWholeSpans: a reader walking the layer in its stored
// order (tar, cp -r) gets each span whole, in about one fetch a span, not
// a start and then a rest.
func TestGzipWalkFetchesWholeSpans(t *testing.T) {
	names, _ := sameSizeFiles("w/f", 400, 0)
	contents := make([][]byte, len(names))
	for i := range names { // hex: compressible, so DEFLATE blocks are short
		contents[i] = []byte(hex.EncodeToString(randomContent(uint64(i), 5<<10)))
	}
	l := newGzipLayerOf(t, names, contents) // 4 MiB of tar
	for _, name := range names {
		l.read(t, name, 0, 10<<10)
	}
	l.settle()
	spans := l.view.Info().Checkpoints
	calls, n := l.blob.fetched()
	t.Logf("%d fetches, %d bytes, for %d spans of a %d-byte blob", calls, n, spans, l.blob.Size())
	if spans < 3 || calls > spans+1 {
		t.Errorf("%d fetches for %d spans", calls, spans)
	}
	// A span may end inside the byte the next one starts at.
	if n > l.blob.Size()+int64(spans) {
		t.Errorf("%d bytes fetched of a %d-byte blob", n, l.blob.Size())
	}
}
