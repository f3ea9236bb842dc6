package fs

import (
	"context"
	"fmt"
	"sync/atomic"
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

// inOrder starts the next piece while the bytes of those before are still
// coming, as long as less than prefetchAhead of them is still to come.
func TestInOrderAsksAheadOfBytesStillComing(t *testing.T) {
	sizes := make([]int64, 16)
	for i := range sizes {
		sizes[i] = prefetchPiece
	}
	const lacking = 64 << 10 // each piece's bytes still to come until gate
	gate := make(chan struct{})
	var started atomic.Int64
	done := make(chan int)
	go func() {
		done <- inOrder(context.Background(), nil, sizes, func(i int, here func(int64)) {
			started.Add(1)
			here(prefetchPiece - lacking)
			<-gate
			here(lacking)
		})
	}()
	want := int64(prefetchAhead / lacking)
	for deadline := time.Now().Add(10 * time.Second); started.Load() < want && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := started.Load(); n != want {
		t.Errorf("%d pieces started while each lacked %d KiB; want %d (%d KiB still to come)", n, lacking>>10, want, prefetchAhead>>10)
	}
	close(gate)
	if n := <-done; n != len(sizes) || started.Load() != int64(len(sizes)) {
		t.Fatalf("inOrder started %d (reports %d) of %d", started.Load(), n, len(sizes))
	}

	// A piece whose fetch reports nothing (its streams were another's)
	// gives its share back when it returns.
	if n := inOrder(context.Background(), nil, sizes, func(int, func(int64)) {}); n != len(sizes) {
		t.Fatalf("inOrder started %d of %d silent pieces", n, len(sizes))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n := inOrder(ctx, nil, sizes, func(int, func(int64)) { t.Error("a piece started after stop") }); n != 0 {
		t.Fatalf("inOrder started %d pieces after stop", n)
	}
}

// The bytes kept ahead follow the link: a far link's round trip wants more
// than prefetchAhead; a measure made while too little was ahead (the rate
// then is what was ahead over the latency) doubles it.
func TestLinkEstimateAhead(t *testing.T) {
	var nilLink *linkEstimate
	if got := nilLink.ahead(); got != prefetchAhead {
		t.Fatalf("no estimate: %d ahead, want %d", got, prefetchAhead)
	}
	var l linkEstimate
	if got := l.ahead(); got != prefetchAhead {
		t.Fatalf("nothing measured: %d ahead, want %d", got, prefetchAhead)
	}
	const far, rate = 100 * time.Millisecond, 12.5e6 // 100 Mbit/s
	l.note(far, 0)
	l.note(0, float64(prefetchAhead)/far.Seconds()) // held by what was ahead
	if got := l.ahead(); got != 2*prefetchAhead {
		t.Fatalf("a rate held by the bytes ahead: %d ahead, want twice %d", got, prefetchAhead)
	}
	for range 20 {
		l.note(far, rate)
	}
	if got, want := l.ahead(), int64(2*rate*far.Seconds()); got < want*9/10 || got > want*11/10 {
		t.Fatalf("100 ms at 100 Mbit/s: %d ahead, want about %d", got, want)
	}
	for range 40 {
		l.note(time.Second, 1e9)
	}
	if got := l.ahead(); got != maxAhead {
		t.Fatalf("a huge link: %d ahead, want the bound %d", got, maxAhead)
	}
	var lan linkEstimate
	lan.note(time.Millisecond, 125e6)
	if got := lan.ahead(); got != prefetchAhead {
		t.Fatalf("1 ms at 1 Gbit/s: %d ahead, want the floor %d", got, prefetchAhead)
	}
}
