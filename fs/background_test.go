package fs

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// newPolicyLayer is newTestLayer with a background fetch policy.
func newPolicyLayer(t *testing.T, names []string, sizes []int, p PrefetchPolicy) *testLayer {
	t.Helper()
	return newTestLayer(t, names, sizes, WithBackground(p))
}

// manyFiles is 150 files of 100 KiB and one of 8 MiB, stored last.
func manyFiles() ([]string, []int) {
	var names []string
	var sizes []int
	for i := range 150 {
		names = append(names, fmt.Sprintf("d%02d/f%03d", i/10, i))
		sizes = append(sizes, 100<<10)
	}
	return append(names, "z/big"), append(sizes, 8<<20)
}

// uncached counts the layer's chunks not in the cache.
func (l *testLayer) uncached(t *testing.T) int {
	t.Helper()
	all, err := l.view.ChunksInBlob(0, l.blob.Size(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range all {
		if !l.cache.Has(ch.Digest) {
			n++
		}
	}
	return n
}

// waitAllCached waits, bounded, for every chunk to be cached.
func (l *testLayer) waitAllCached(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for l.uncached(t) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d chunks still not cached after 30s", l.uncached(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readBroadly reads the first KiB of every other file, in a random
// order (no blob-order walk, no neighbourhood read-ahead to speak of).
func readBroadly(t *testing.T, l *testLayer, names []string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		l.read(t, names[(i*37)%150], 0, 1024)
	}
}

func TestBackgroundFetchOnceReadingIsBroad(t *testing.T) {
	names, sizes := manyFiles()
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAuto})
	readBroadly(t, l, names, 10)
	l.settle()
	if l.content.broad.started {
		t.Fatal("the background fetch started after 10 files")
	}
	readBroadly(t, l, names, broadFiles+10)
	l.waitAllCached(t)
	// Everything is there: reading it all fetches nothing more.
	l.blob.reset()
	for _, name := range names {
		l.read(t, name, 0, int64(len(l.files[name])))
	}
	if calls, _ := l.blob.fetched(); calls != 0 {
		t.Errorf("reading the layer after its background fetch made %d fetches", calls)
	}
}

func TestBackgroundFetchOff(t *testing.T) {
	names, sizes := manyFiles()
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchOff})
	readBroadly(t, l, names, broadFiles+40)
	l.settle()
	l.content.Close() // waits for all background work
	if l.content.broad.started {
		t.Error("a background fetch started with prefetch off")
	}
	if l.uncached(t) == 0 {
		t.Error("every chunk was fetched with prefetch off")
	}
}

func TestBackgroundFetchAll(t *testing.T) {
	names, sizes := manyFiles()
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAll})
	l.content.StartBackground(0)
	l.waitAllCached(t)
	// Each request is a large piece, not a file.
	calls, n := l.blob.fetched()
	if calls > int(n/bgPiece)+4 {
		t.Errorf("%d fetches for %d bytes: want pieces of about %d bytes", calls, n, bgPiece)
	}
}

func TestBackgroundFetchBudget(t *testing.T) {
	names, sizes := manyFiles()
	const budget = 6 << 20
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAuto, Budget: budget})
	readBroadly(t, l, names, broadFiles+10)
	select {
	case <-l.content.broad.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the background fetch did not end at its budget")
	}
	if got := l.content.broad.fetched; got > budget || got == 0 {
		t.Errorf("the background fetch took %d bytes, budget %d", got, budget)
	}
	if l.uncached(t) == 0 {
		t.Error("every chunk was fetched past the budget")
	}
}

// TestBackgroundStopsOnClose: unmounting (Close) ends a background fetch
// held at the registry, and nothing is fetched afterwards.
func TestBackgroundStopsOnClose(t *testing.T) {
	names, sizes := manyFiles()
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAll})
	l.blob.mu.Lock()
	l.blob.hold, l.blob.free, l.blob.held = make(chan struct{}), -1, make(chan struct{}, 64)
	l.blob.mu.Unlock()
	l.content.StartBackground(0)
	<-l.blob.held // a background request is at the registry
	closed := make(chan struct{})
	go func() {
		l.content.Close()
		close(closed)
	}()
	time.Sleep(10 * time.Millisecond)
	close(l.blob.hold) // let the request in flight return; Close waits for it
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not stop the background fetch")
	}
	calls, _ := l.blob.fetched()
	time.Sleep(50 * time.Millisecond)
	if again, _ := l.blob.fetched(); again != calls {
		t.Errorf("%d fetches after Close", again-calls)
	}
}

// TestBackgroundYieldsToReads: no background request goes out while a
// read waits for a fetch of its own, however reads and the background
// fetch interleave (an ordering check on the layer's own record of
// events, not a timing one).
func TestBackgroundYieldsToReads(t *testing.T) {
	names, sizes := manyFiles()
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAll})
	var mu sync.Mutex
	open, pieces, overlaps := 0, 0, 0
	l.content.broad.onEvent = func(ev string, off int64) { // runs under broad.mu
		mu.Lock()
		defer mu.Unlock()
		switch ev {
		case "read":
			open++
		case "done":
			open--
		case "piece":
			pieces++
			if open > 0 {
				overlaps++
			}
		}
	}
	l.content.StartBackground(0)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				name := names[(w*41+i*7)%150]
				e := l.entry(t, name)
				buf := make([]byte, 1024)
				if _, err := l.content.ReadAt(context.Background(), e, buf, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	l.waitAllCached(t)
	mu.Lock()
	defer mu.Unlock()
	if pieces == 0 {
		t.Fatal("no background request was made")
	}
	if overlaps != 0 {
		t.Errorf("%d of %d background requests went out while a read waited for its own", overlaps, pieces)
	}
}

func TestCheckPrefetchPolicy(t *testing.T) {
	for _, ok := range []PrefetchPolicy{{}, {Mode: PrefetchAuto, Budget: 1 << 30}, {Mode: PrefetchOff}, {Mode: PrefetchAll}} {
		if err := CheckPrefetchPolicy(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, bad := range []PrefetchPolicy{{Mode: "sometimes"}, {Mode: PrefetchAuto, Budget: -1}} {
		if err := CheckPrefetchPolicy(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestBackgroundPreemptedByLargeRead: a read that must fetch a large
// stream of its own cancels the background requests on the wire (they
// would share the link with it), but not one holding a stream it waits
// for; a read waiting for a stream of a cancelled request gets its bytes
// all the same, and the background fetch fetches what was cancelled in a
// later pass. A small read cancels nothing.
func TestBackgroundPreemptedByLargeRead(t *testing.T) {
	names, sizes := manyFiles()
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAll})
	big := l.entry(t, "z/big")
	bigChunks, err := l.view.Chunks(big.Ino, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	l.blob.mu.Lock()
	// Only z/big's first stream is served; everything else waits.
	l.blob.hold, l.blob.free, l.blob.held = hold, bigChunks[0].BlobOffset, make(chan struct{}, 256)
	l.blob.mu.Unlock()
	released := false
	release := func() {
		if !released {
			released = true
			close(hold)
		}
	}
	t.Cleanup(release)
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal(what)
		}
	}
	read := func(name string, n int) <-chan error {
		done := make(chan error, 1)
		go func() {
			e := l.entry(t, name)
			buf := make([]byte, n)
			_, err := l.content.ReadAt(t.Context(), e, buf, 0)
			if err == nil && !bytes.Equal(buf, l.files[name][:n]) {
				err = fmt.Errorf("%s: wrong bytes", name)
			}
			done <- err
		}()
		return done
	}

	l.content.StartBackground(0)
	wait(l.blob.held, "no background request reached the registry")
	// A read of a stream the background request holds waits for it and
	// fetches nothing of its own: it cancels nothing.
	small := read(names[0], 1024)
	time.Sleep(50 * time.Millisecond)
	if n := l.blob.dropped.Load(); n != 0 {
		t.Fatalf("a read with nothing of its own to fetch cancelled %d requests", n)
	}
	// A read of z/big's first 1 MiB stream cancels the background
	// request, and the small read, whose stream it held, fetches again.
	if err := <-read("z/big", 1024); err != nil {
		t.Fatal(err)
	}
	// The cancelled requests notice it on their own goroutines, which may
	// run after the read returns.
	for deadline := time.Now().Add(10 * time.Second); l.blob.dropped.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := l.blob.dropped.Load(); n == 0 {
		t.Fatal("a large read's own fetch cancelled no background request")
	}
	release()
	select {
	case err := <-small:
		if err != nil {
			t.Fatalf("a read waiting for a cancelled request's stream: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a read waiting for a cancelled request's stream never returned")
	}
	l.waitAllCached(t) // the cancelled streams were fetched again
}

// TestReadsOfPredictedFilesAreNotBroad: reads that wait only for bytes a
// read-ahead has on the way (a program reading a directory's files as the
// neighbourhood read-ahead brings them) follow the read-ahead's prediction:
// however many files are read so, the layer is not read broadly, unless
// the reader has long walked the layer in its stored order. Reads with
// fetches of their own are misses.
func TestReadsOfPredictedFilesAreNotBroad(t *testing.T) {
	// A small layer: the reads are noted, not made (demandStart is what
	// load calls), so the background fetch they start has little to do.
	names, sizes := []string{"a", "b"}, []int{1 << 10, 1 << 10}
	l := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAuto})
	c := l.content
	none := func(int64) bool { return false }
	for ino := range uint64(3 * broadFiles) {
		c.demandStart(100+ino, 0, 0, 1<<10, none)
		c.demandDone()
	}
	if c.broad.started {
		t.Fatalf("%d reads of files on their way started the background fetch", 3*broadFiles)
	}
	// A long walk in blob order: its reads of files on their way count.
	c.ahead.mu.Lock()
	c.ahead.window = farWindow
	c.ahead.mu.Unlock()
	for ino := range uint64(broadFiles) {
		c.demandStart(1000+ino, 0, 0, 1<<10, none)
		c.demandDone()
	}
	if !c.broad.started {
		t.Fatal("a long walk's reads did not start the background fetch")
	}
	l2 := newPolicyLayer(t, names, sizes, PrefetchPolicy{Mode: PrefetchAuto})
	for ino := range uint64(broadFiles) {
		l2.content.demandStart(100+ino, 0, 1<<10, 1<<10, none)
		l2.content.demandDone()
	}
	if !l2.content.broad.started {
		t.Fatalf("%d reads with fetches of their own did not start the background fetch", broadFiles)
	}
}
