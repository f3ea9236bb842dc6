package remote_test

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/stratafs/strata/remote"
)

// pingCounter counts the registry pings (GET /v2/) behind a handler.
type pingCounter struct {
	next  http.Handler
	pings atomic.Int64
}

func (p *pingCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		p.pings.Add(1)
	}
	p.next.ServeHTTP(w, r)
}

// TestClientCacheSharesHandshake: readers of one repository sharing a
// ClientCache ping the registry once; without it, once each.
func TestClientCacheSharesHandshake(t *testing.T) {
	var pc *pingCounter
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		pc = &pingCounter{next: h}
		return pc
	})
	cache := remote.NewClientCache()
	for i := 0; i < 3; i++ {
		br := f.reader(t, remote.WithClientCache(cache))
		f.readCheck(t, br, int64(i)*1000, 1000)
	}
	if got := pc.pings.Load(); got != 1 {
		t.Errorf("3 readers sharing a cache pinged %d times, want 1", got)
	}
	pc.pings.Store(0)
	for i := 0; i < 2; i++ {
		f.readCheck(t, f.reader(t), 0, 100)
	}
	if got := pc.pings.Load(); got != 2 {
		t.Errorf("2 readers without a cache pinged %d times, want 2", got)
	}
}
