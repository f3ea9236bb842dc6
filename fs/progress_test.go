package fs

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestProgressOnlyForLayersOfAMegabyteOrMore: a read reports after
// progressEvery, and only for layers whose size in MB means something.
func TestProgressOnlyForLayersOfAMegabyteOrMore(t *testing.T) {
	var reports []int64
	ctx := WithProgress(context.Background(), func(_ digest.Digest, done, total int64) { reports = append(reports, total) })
	for _, size := range []int{progressMin - 1, progressMin} {
		r := withProgress(ctx, bytes.NewReader(make([]byte, size)), digest.FromString("l"), int64(size))
		if p, ok := r.(*progressReaderAt); ok {
			p.last = time.Now().Add(-progressEvery) // as if the read had been slow
		}
		if _, err := r.ReadAt(make([]byte, 10), 0); err != nil {
			t.Fatal(err)
		}
	}
	if len(reports) != 1 || reports[0] != progressMin {
		t.Errorf("reports for layers of sizes %v, want one, for the layer of 1 MiB", reports)
	}
}
