package fs

import (
	"fmt"
	"testing"
	"time"

	"github.com/stratafs/strata/fs/index"
)

func TestPrefetchFetchesPrioritizedRegionOnly(t *testing.T) {
	var names []string
	var sizes []int
	for i := 0; i < 24; i++ {
		names = append(names, fmt.Sprintf("f%02d", i))
		sizes = append(sizes, 200<<10)
	}
	l := newTestLayer(t, names, sizes)
	// The region: the first 12 files, as a prefetch landmark after them
	// would mark it.
	end := l.streamStart(t, "f12")
	l.content.Prefetch(0, end)
	for i := 0; l.content.prefetchEnd.Load() != 0; i++ {
		if i > 1000 {
			t.Fatal("prefetch did not finish within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.settle()
	calls, n := l.blob.fetched()
	if n > end || n < end*9/10 {
		t.Fatalf("prefetch of a %d-byte region fetched %d bytes", end, n)
	}
	if maxCalls := int(end/prefetchPiece) + 2; calls < 2 || calls > maxCalls {
		t.Fatalf("prefetch of %d bytes took %d fetches; want a few pieces (2..%d)", end, calls, maxCalls)
	}
	// The prioritized files are served from the cache, the others are not
	// cached.
	l.blob.reset()
	for _, name := range names[:12] {
		l.read(t, name, 0, 200<<10)
	}
	if calls, _ := l.blob.fetched(); calls != 0 {
		t.Fatalf("reading prefetched files fetched %d times", calls)
	}
	for _, ch := range mustChunks(t, l, "f12") {
		if l.cache.Has(ch.Digest) {
			t.Fatal("a file after the region was prefetched")
		}
	}
}

func (l *testLayer) streamStart(t *testing.T, name string) int64 {
	t.Helper()
	return mustChunks(t, l, name)[0].BlobOffset
}

func mustChunks(t *testing.T, l *testLayer, name string) []index.Chunk {
	t.Helper()
	e := l.entry(t, name)
	chunks, err := l.view.Chunks(e.Ino, 0, e.Size)
	if err != nil || len(chunks) == 0 {
		t.Fatalf("chunks of %s: %v", name, err)
	}
	return chunks
}
