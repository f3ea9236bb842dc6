package e2e

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
)

// TestMountReadsTOCsWhileConfigComes: a mount asks for its layers' TOCs
// as soon as the manifest names them, not after the image config (one
// round trip sooner). The proxy holds the config (the one blob read
// without a Range) until a layer's TOC is asked for: a mount that waited
// for the config first would be held for the whole timeout. An ordering
// check, not a timing one; writable mounts go the same way.
func TestMountReadsTOCsWhileConfigComes(t *testing.T) {
	requireRoot(t)
	ref := push(t, shared.reg, "warm-toc", "v1", fixture.Standard(), fixture.FormEStargz)
	for _, writable := range []bool{false, true} {
		p := startProxy(t, shared.reg)
		tocAsked := make(chan struct{})
		var once sync.Once
		var mu sync.Mutex
		configHeld := false
		p.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
			if !proxy.IsBlob(r) || r.Method != http.MethodGet {
				return false
			}
			if r.Header.Get("Range") != "" {
				once.Do(func() { close(tocAsked) })
				return false
			}
			select {
			case <-tocAsked:
				mu.Lock()
				configHeld = true
				mu.Unlock()
			case <-time.After(10 * time.Second):
			}
			return false
		})
		d := startDaemon(t, nil)
		if writable {
			d.mountRW(t, viaProxy(ref, shared.reg, p))
		} else {
			d.mount(t, viaProxy(ref, shared.reg, p))
		}
		p.SetFault(nil)
		mu.Lock()
		held := configHeld
		mu.Unlock()
		if !held {
			t.Errorf("writable=%v: no layer's TOC was asked for while the config was on its way", writable)
		}
	}
}
