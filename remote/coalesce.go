package remote

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"
)

const (
	// coalesceGap: ranges separated by at most this many bytes share one
	// request. Fetching a small gap costs less than a round trip.
	coalesceGap = 32 << 10
	// coalesceMax: merging stops at this request size, so one slow request
	// does not hold many unrelated reads hostage.
	coalesceMax = 16 << 20
)

// Range is Len bytes of a blob starting at Off.
type Range struct{ Off, Len int64 }

func (g Range) end() int64 { return g.Off + g.Len }

// Fetch reads several ranges of the blob. Ranges whose gap is at most 32 KiB
// are merged into one HTTP request as long as the merged request stays within
// 16 MiB; merged requests run concurrently (within WithMaxConcurrency).
// result[i] holds exactly ranges[i]; every range must lie inside the blob.
// Each result is the caller's own copy.
func (r *BlobReader) Fetch(ctx context.Context, ranges []Range) ([][]byte, error) {
	out := make([][]byte, len(ranges))
	if err := r.FetchEach(ctx, ranges, func(i int, data []byte) { out[i] = data }); err != nil {
		return nil, err
	}
	return out, nil
}

// FetchEach reads ranges as Fetch does, but hands each range to got as
// soon as its bytes are in, while the rest of its request is still on the
// way: a reader waiting for the first of many ranges fetched together
// waits for its own bytes only. got is called once for every range
// delivered, one call at a time, never after FetchEach returns; data is
// the caller's own. On an error, the ranges not handed to got have failed.
func (r *BlobReader) FetchEach(ctx context.Context, ranges []Range, got func(i int, data []byte)) error {
	for i, g := range ranges {
		if g.Off < 0 || g.Len < 0 || g.Off > r.size || g.Len > r.size-g.Off {
			return fmt.Errorf("%w: blob %s (size %d): range %d is %d+%d",
				ErrInvalidRange, r.digest, r.size, i, g.Off, g.Len)
		}
	}
	var mu sync.Mutex // serializes got; ended stops it
	ended := false
	defer func() {
		mu.Lock()
		ended = true
		mu.Unlock()
	}()
	for i, g := range ranges {
		if g.Len == 0 {
			got(i, []byte{}) // zero-length ranges need no request
		}
	}
	eg, ectx := errgroup.WithContext(ctx)
	for _, grp := range coalesce(ranges) {
		// Members in the order their last byte arrives.
		slices.SortStableFunc(grp.members, func(a, b int) int {
			return cmp.Compare(ranges[a].end(), ranges[b].end())
		})
		next := 0
		// on hands over the members whose bytes are all in. It runs in
		// the fetch's goroutine, which may outlive this call when the
		// caller gives up (readRange shares fetches): hence ended.
		on := func(buf []byte, have int64) {
			mu.Lock()
			defer mu.Unlock()
			for ; !ended && next < len(grp.members); next++ {
				g := ranges[grp.members[next]]
				rel := g.Off - grp.span.Off
				if rel+g.Len > have {
					return
				}
				// Copied: buf may be shared with other callers of the
				// same range, and members may overlap.
				got(grp.members[next], slices.Clone(buf[rel:rel+g.Len]))
			}
		}
		eg.Go(func() error {
			data, err := r.readRange(ectx, grp.span.Off, grp.span.Len, on)
			if err != nil {
				return err
			}
			// What progress did not hand over: a fetch this call joined,
			// a spooled blob.
			on(data, int64(len(data)))
			return nil
		})
	}
	return eg.Wait()
}

// group is one HTTP request's worth of ranges.
type group struct {
	span    Range
	members []int // indexes into the caller's ranges
}

// coalesce sorts ranges by offset and merges neighbours. Zero-length ranges
// are left out: they need no bytes.
func coalesce(ranges []Range) []group {
	order := make([]int, 0, len(ranges))
	for i, g := range ranges {
		if g.Len > 0 {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(ranges[a].Off, ranges[b].Off)
	})
	var groups []group
	for _, i := range order {
		g := ranges[i]
		if n := len(groups); n > 0 {
			cur := &groups[n-1]
			end := max(cur.span.end(), g.end())
			if g.Off <= cur.span.end()+coalesceGap && end-cur.span.Off <= coalesceMax {
				cur.span.Len = end - cur.span.Off
				cur.members = append(cur.members, i)
				continue
			}
		}
		groups = append(groups, group{span: g, members: []int{i}})
	}
	return groups
}
