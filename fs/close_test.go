package fs

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestEachParallelOverlaps: Pool.Close's layers close at once, so that a
// stop with many busy layers waits one unmount grace, not one for each.
// Every call waits until all have started: calls made one after another
// never get there (the wait is bounded, for the failure's sake only).
func TestEachParallelOverlaps(t *testing.T) {
	const n = 10
	var wg sync.WaitGroup
	wg.Add(n)
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	boom := errors.New("boom")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := EachParallel(n, closeParallel, func(i int) error {
		wg.Done()
		select {
		case <-all:
		case <-ctx.Done():
			return errors.New("the calls did not overlap")
		}
		if i == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the failing call's", err)
	}
	if err.Error() != "boom" {
		t.Fatalf("err = %v: calls ran one after another", err)
	}
	// The limit holds.
	var mu sync.Mutex
	running, most := 0, 0
	EachParallel(50, 4, func(int) error {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		time.Sleep(time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	})
	if most > 4 {
		t.Fatalf("%d calls at once, limit 4", most)
	}
}
