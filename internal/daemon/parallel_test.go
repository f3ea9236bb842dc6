package daemon

import (
	"errors"
	"testing"
	"time"
)

// TestInParallelReleasesAtOnce: the layers (and mounts) a stop or an
// unmount releases are released together, so that those still in use wait
// their grace period once between them, not once each: every call starts
// before any ends, and every error is returned.
func TestInParallelReleasesAtOnce(t *testing.T) {
	const n = 5
	started := make(chan struct{}, n)
	all := make(chan struct{})
	go func() {
		for range n {
			<-started
		}
		close(all)
	}()
	errOdd := errors.New("odd")
	err := inParallel(n, func(i int) error {
		started <- struct{}{}
		select {
		case <-all:
		case <-time.After(30 * time.Second):
			return errors.New("released one at a time")
		}
		if i%2 == 1 {
			return errOdd
		}
		return nil
	})
	if !errors.Is(err, errOdd) || len(err.(interface{ Unwrap() []error }).Unwrap()) != 2 {
		t.Errorf("err = %v, want the two odd calls' errors", err)
	}
}
