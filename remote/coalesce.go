package remote

import (
	"cmp"
	"context"
	"fmt"
	"slices"

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
	for i, g := range ranges {
		if g.Off < 0 || g.Len < 0 || g.Off > r.size || g.Len > r.size-g.Off {
			return nil, fmt.Errorf("%w: blob %s (size %d): range %d is %d+%d",
				ErrInvalidRange, r.digest, r.size, i, g.Off, g.Len)
		}
	}
	out := make([][]byte, len(ranges))
	eg, ectx := errgroup.WithContext(ctx)
	for _, grp := range coalesce(ranges) {
		eg.Go(func() error {
			data, err := r.readRange(ectx, grp.span.Off, grp.span.Len)
			if err != nil {
				return err
			}
			for _, i := range grp.members {
				g := ranges[i]
				rel := g.Off - grp.span.Off
				// Copied: data may be shared with other callers of the
				// same range, and members may overlap.
				out[i] = slices.Clone(data[rel : rel+g.Len])
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	for i := range out {
		if out[i] == nil {
			out[i] = []byte{} // zero-length ranges need no request
		}
	}
	return out, nil
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
