package remote_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stratafs/strata/remote"
)

// rangeRecorder records the Range header of every blob GET.
type rangeRecorder struct {
	mu     sync.Mutex
	ranges []string
}

func (rr *rangeRecorder) inject(w http.ResponseWriter, r *http.Request, n int64) bool {
	rr.mu.Lock()
	rr.ranges = append(rr.ranges, r.Header.Get("Range"))
	rr.mu.Unlock()
	return false
}

func (rr *rangeRecorder) sorted() map[string]bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	m := map[string]bool{}
	for _, r := range rr.ranges {
		m[r] = true
	}
	return m
}

func checkFetched(t *testing.T, f *blobFixture, ranges []remote.Range, got [][]byte) {
	t.Helper()
	if len(got) != len(ranges) {
		t.Fatalf("Fetch returned %d results for %d ranges", len(got), len(ranges))
	}
	for i, g := range ranges {
		if !bytes.Equal(got[i], f.data[g.Off:g.Off+g.Len]) {
			t.Fatalf("result %d (%d+%d): wrong bytes (len %d)", i, g.Off, g.Len, len(got[i]))
		}
	}
}

func TestFetchCoalescesNearbyRanges(t *testing.T) {
	rr := &rangeRecorder{}
	f := newBlobFixture(t, 1<<20, rr.inject, nil)
	br := f.reader(t)
	ranges := []remote.Range{
		{Off: 10000, Len: 100},  // after the next one: order must not matter
		{Off: 0, Len: 100},      // adjacent-ish: gap 9900 bytes
		{Off: 10050, Len: 200},  // overlaps the first
		{Off: 42000, Len: 10},   // gap 31750: still within 32 KiB
		{Off: 500000, Len: 300}, // far away: its own request
		{Off: 600000, Len: 0},   // empty: no request at all
	}
	got, err := br.Fetch(t.Context(), ranges)
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, f, ranges, got)
	want := map[string]bool{"bytes=0-42009": true, "bytes=500000-500299": true}
	if g := rr.sorted(); len(g) != len(want) || !g["bytes=0-42009"] || !g["bytes=500000-500299"] {
		t.Fatalf("requests %v, want %v", g, want)
	}
	// Results are the caller's own: changing one leaves the overlap intact.
	got[0][60] ^= 0xff
	if got[2][10] != f.data[10060] {
		t.Fatal("overlapping results share memory")
	}
}

func TestFetchSplitsAtGapAndSizeLimits(t *testing.T) {
	rr := &rangeRecorder{}
	f := newBlobFixture(t, 20<<20, rr.inject, nil)
	br := f.reader(t)
	ranges := []remote.Range{
		{Off: 0, Len: 10},
		{Off: 10 + 32<<10 + 1, Len: 10},   // gap one byte over 32 KiB
		{Off: 1 << 20, Len: 9 << 20},      // together with the next: 17 MiB > 16 MiB
		{Off: 10 << 20, Len: 8 << 20},     // adjacent to the previous
		{Off: 18<<20 + 100, Len: 1 << 20}, // gap of 100 bytes, 9 MiB merged: joins
	}
	got, err := br.Fetch(t.Context(), ranges)
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, f, ranges, got)
	want := []string{"bytes=0-9", "bytes=32779-32788", "bytes=1048576-10485759", "bytes=10485760-19923043"}
	g := rr.sorted()
	if len(g) != len(want) {
		t.Fatalf("requests %v, want %v", g, want)
	}
	for _, w := range want {
		if !g[w] {
			t.Fatalf("requests %v, want %v", g, want)
		}
	}
}

func TestFetchRejectsRangesOutsideBlob(t *testing.T) {
	f := newBlobFixture(t, 1000, nil, nil)
	br := f.reader(t)
	for _, g := range []remote.Range{{Off: -1, Len: 1}, {Off: 0, Len: -1}, {Off: 990, Len: 11}, {Off: 1001, Len: 0}, {Off: 1 << 62, Len: 1 << 62}} {
		if _, err := br.Fetch(t.Context(), []remote.Range{{Off: 0, Len: 1}, g}); !errors.Is(err, remote.ErrInvalidRange) {
			t.Errorf("Fetch(%+v): err = %v, want ErrInvalidRange", g, err)
		}
	}
	if n := f.inj.gets.Load(); n != 0 {
		t.Fatalf("invalid Fetch calls sent %d requests", n)
	}
}

func TestFetchReportsFailure(t *testing.T) {
	f := newBlobFixture(t, 1<<20, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if r.Header.Get("Range") == "bytes=900000-900009" {
			http.Error(w, "denied", http.StatusForbidden)
			return true
		}
		return false
	}, nil)
	br := f.reader(t)
	_, err := br.Fetch(t.Context(), []remote.Range{{Off: 0, Len: 10}, {Off: 900000, Len: 10}})
	wantTemporary(t, err, false, http.StatusForbidden)
}

// serveInTwo answers a blob GET of span [0, n) with a 206 whose body stops
// after cut bytes until release is closed (or ten seconds pass), then sends
// the rest, or, with abort, drops the connection instead.
func serveInTwo(data []byte, cut int, release <-chan struct{}, abort bool) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(data)-1, len(data)))
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(data[:cut])
		_ = http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		if abort {
			panic(http.ErrAbortHandler)
		}
		_, _ = w.Write(data[cut:])
	}
}

// A range fetched together with others is handed over as soon as its own
// bytes are in, while the rest of the request is still on its way.
func TestFetchEachHandsOverRangesAsTheyArrive(t *testing.T) {
	const size = 256 << 10
	release := make(chan struct{})
	var f *blobFixture
	f = newBlobFixture(t, size, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		serveInTwo(f.data, 1000, release, false)(w, r)
		return true
	}, nil)
	br := f.reader(t)
	ranges := []remote.Range{{Off: 5000, Len: size - 5000}, {Off: 0, Len: 1000}, {Off: 10, Len: 20}}
	type handed struct {
		i    int
		data []byte
	}
	got := make(chan handed, len(ranges))
	done := make(chan error, 1)
	go func() {
		done <- br.FetchEach(t.Context(), ranges, func(i int, data []byte) { got <- handed{i, data} })
	}()
	first := map[int]bool{}
	for range 2 {
		select {
		case h := <-got:
			first[h.i] = true
			if !bytes.Equal(h.data, f.data[ranges[h.i].Off:ranges[h.i].Off+ranges[h.i].Len]) {
				t.Fatalf("range %d: wrong bytes", h.i)
			}
		case <-time.After(5 * time.Second):
			close(release)
			t.Fatal("the ranges whose bytes were in were not handed over before the rest came")
		}
	}
	if !first[1] || !first[2] {
		t.Fatalf("handed over first: %v, want ranges 1 and 2", first)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h := <-got; h.i != 0 || !bytes.Equal(h.data, f.data[5000:]) {
		t.Fatalf("last range handed over: %d (%d bytes)", h.i, len(h.data))
	}
	if len(got) != 0 {
		t.Fatal("a range was handed over twice")
	}
	if n := f.inj.gets.Load(); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

// A connection dropped mid-body: what arrived whole is handed over once;
// a retry fetches the span again and hands over only the rest, and when
// every try is dropped, the range that never arrived whole is not handed
// over and FetchEach fails.
func TestFetchEachDroppedMidBody(t *testing.T) {
	const size = 64 << 10
	released := make(chan struct{})
	close(released)
	for _, tc := range []struct {
		name  string
		drops int64 // requests dropped, the first ones
		want  []int // times each range is handed over
		fails bool
	}{
		{name: "then retried", drops: 1, want: []int{1, 1}},
		{name: "every time", drops: 1 << 30, want: []int{1, 0}, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f *blobFixture
			f = newBlobFixture(t, size, func(w http.ResponseWriter, r *http.Request, n int64) bool {
				if n > tc.drops {
					return false
				}
				serveInTwo(f.data, 4000, released, true)(w, r)
				return true
			}, nil)
			br := f.reader(t)
			ranges := []remote.Range{{Off: 0, Len: 4000}, {Off: 4000, Len: size - 4000}}
			counts := make([]int, len(ranges))
			err := br.FetchEach(t.Context(), ranges, func(i int, data []byte) {
				counts[i]++
				if !bytes.Equal(data, f.data[ranges[i].Off:ranges[i].Off+ranges[i].Len]) {
					t.Errorf("range %d: wrong bytes", i)
				}
			})
			if (err != nil) != tc.fails {
				t.Fatalf("err = %v, want failure %v", err, tc.fails)
			}
			if !slices.Equal(counts, tc.want) {
				t.Fatalf("ranges handed over %v times, want %v", counts, tc.want)
			}
			if n := f.inj.gets.Load(); !tc.fails && n != tc.drops+1 {
				t.Fatalf("%d requests, want %d (dropped, then one retry)", n, tc.drops+1)
			}
		})
	}
}
