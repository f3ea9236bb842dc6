package fs

import (
	"slices"
	"sync"
)

// maxSpanPrefixBytes bounds what the daemon keeps, over all its layers, of
// the gzip spans it fetched the start of: a few dozen spans (a span of
// 1 MiB of tar is 300 KB or so compressed), so that the reads of a
// program's files, which come in no order of the layer's, find the start
// of their span here and fetch only its rest.
const maxSpanPrefixBytes = 32 << 20

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
	byKey map[spanKey][]byte
	order []spanKey // oldest first
	bytes int64
	limit int64
}

// spanKey names a span: its layer's reader and its start in the blob.
type spanKey struct {
	c  *Content
	bo int64
}

// prefixes is the daemon's one store of span starts, for all layers.
var prefixes = &spanPrefixes{limit: maxSpanPrefixBytes}

// take removes and returns what is kept of the span k (nil if nothing):
// the caller owns it.
func (s *spanPrefixes) take(k spanKey) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.byKey[k]
	if ok {
		s.remove(k)
	}
	return b
}

// put keeps b as the start of the span k, replacing what was kept of it
// and evicting the oldest spans beyond the limit.
func (s *spanPrefixes) put(k spanKey, b []byte) {
	if int64(len(b)) > s.limit/4 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byKey == nil {
		s.byKey = map[spanKey][]byte{}
	}
	if _, ok := s.byKey[k]; ok {
		s.remove(k)
	}
	s.byKey[k] = b
	s.order = append(s.order, k)
	s.bytes += int64(len(b))
	for s.bytes > s.limit {
		s.remove(s.order[0])
	}
}

// has reports whether the start of the span k is kept.
func (s *spanPrefixes) has(k spanKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byKey[k]
	return ok
}

// drop forgets every span of layer c (it is closed).
func (s *spanPrefixes) drop(c *Content) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range slices.Clone(s.order) {
		if k.c == c {
			s.remove(k)
		}
	}
}

// remove forgets span k, which is kept. The caller holds mu.
func (s *spanPrefixes) remove(k spanKey) {
	s.bytes -= int64(len(s.byKey[k]))
	delete(s.byKey, k)
	if i := slices.Index(s.order, k); i >= 0 {
		s.order = slices.Delete(s.order, i, i+1)
	}
}
