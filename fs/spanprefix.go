package fs

import (
	"slices"
	"sync"
)

// maxSpanPrefixBytes bounds what one layer keeps of the gzip spans it
// fetched the start of: a few spans (a span of 4 MiB of tar is about
// 1.3 MB compressed), so that the reads of a program's files, which come
// in no order of the layer's, find the start of their span here and fetch
// only its rest.
const maxSpanPrefixBytes = 8 << 20

// spanPrefixes keeps, for a while, the compressed start of gzip spans
// that were fetched and decoded only up to where the reads of the time
// needed them (the index records how far each chunk's decoding needs).
// A later read further into the span takes that start out and fetches
// only the bytes after it; the span is decoded from its checkpoint again,
// which costs CPU, not a round trip or bytes on the link.
//
// The bytes were fetched from the blob but are checked only through the
// chunks they decode: every chunk is verified against its digest after
// decoding, so a start that was damaged gives a verification error, and
// one whose decoding failed is never put back.
type spanPrefixes struct {
	mu    sync.Mutex
	byOff map[int64][]byte // by span start in the blob
	order []int64          // oldest first
	bytes int64
}

// take removes and returns what is kept of the span starting at bo (nil
// if nothing): the caller owns it.
func (s *spanPrefixes) take(bo int64) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.byOff[bo]
	if !ok {
		return nil
	}
	delete(s.byOff, bo)
	s.bytes -= int64(len(b))
	if i := slices.Index(s.order, bo); i >= 0 {
		s.order = append(s.order[:i], s.order[i+1:]...)
	}
	return b
}

// put keeps b as the start of the span at bo, replacing what was kept of
// it and evicting the oldest spans beyond maxSpanPrefixBytes.
func (s *spanPrefixes) put(bo int64, b []byte) {
	if int64(len(b)) > maxSpanPrefixBytes/2 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byOff == nil {
		s.byOff = map[int64][]byte{}
	}
	if old, ok := s.byOff[bo]; ok {
		s.bytes -= int64(len(old))
		if i := slices.Index(s.order, bo); i >= 0 {
			s.order = append(s.order[:i], s.order[i+1:]...)
		}
	}
	s.byOff[bo] = b
	s.order = append(s.order, bo)
	s.bytes += int64(len(b))
	for s.bytes > maxSpanPrefixBytes {
		oldest := s.order[0]
		s.order = s.order[1:]
		s.bytes -= int64(len(s.byOff[oldest]))
		delete(s.byOff, oldest)
	}
}

// has reports whether the start of the span at bo is kept.
func (s *spanPrefixes) has(bo int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byOff[bo]
	return ok
}
