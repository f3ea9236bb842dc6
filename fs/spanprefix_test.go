package fs

import (
	"bytes"
	"testing"
)

// TestSpanPrefixesBounded: span starts are kept up to the limit over all
// layers, the oldest evicted first, taken out once, and dropped with
// their layer.
func TestSpanPrefixesBounded(t *testing.T) {
	s := &spanPrefixes{limit: 1000}
	a, b := &Content{}, &Content{}
	s.put(spanKey{a, 0}, bytes.Repeat([]byte{1}, 200))
	s.put(spanKey{b, 0}, bytes.Repeat([]byte{2}, 200))
	s.put(spanKey{a, 7}, bytes.Repeat([]byte{3}, 200))
	s.put(spanKey{a, 9}, bytes.Repeat([]byte{9}, 251)) // over a quarter of the limit: not kept
	if s.has(spanKey{a, 9}) {
		t.Error("a start over a quarter of the limit was kept")
	}
	s.put(spanKey{b, 5}, bytes.Repeat([]byte{4}, 200))
	s.put(spanKey{b, 6}, bytes.Repeat([]byte{5}, 200))
	s.put(spanKey{b, 8}, bytes.Repeat([]byte{6}, 200)) // 1200 bytes: the oldest goes
	if s.has(spanKey{a, 0}) || !s.has(spanKey{b, 0}) || s.bytes != 1000 {
		t.Errorf("after the limit: a/0 kept %v, b/0 kept %v, %d bytes", s.has(spanKey{a, 0}), s.has(spanKey{b, 0}), s.bytes)
	}
	if got := s.take(spanKey{a, 7}); len(got) != 200 || got[0] != 3 {
		t.Errorf("take = %d bytes", len(got))
	}
	if s.take(spanKey{a, 7}) != nil {
		t.Error("a start taken twice")
	}
	s.put(spanKey{b, 5}, bytes.Repeat([]byte{7}, 100)) // replaces
	if s.bytes != 700 {
		t.Errorf("%d bytes after a replacement, want 700", s.bytes)
	}
	s.drop(b)
	if s.bytes != 0 || len(s.order) != 0 || len(s.byKey) != 0 {
		t.Errorf("after dropping every layer: %d bytes, %d keys", s.bytes, len(s.byKey))
	}
}
