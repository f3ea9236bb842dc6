package proxy

import (
	"sync"
	"time"
)

// Profile describes a network link.
type Profile struct {
	Name string
	// RTT is added once per request: half before the request is forwarded,
	// half before the first response byte.
	RTT time.Duration
	// BandwidthBps caps response body bytes per second over all concurrent
	// responses together, like one shared link, and, separately, request
	// body bytes (uploads) the same way: the link is full duplex, so a push
	// and a pull at once do not slow each other. Bytes, not bits. 0 means
	// unlimited.
	BandwidthBps int64
}

// Ready-made links.
var (
	ProfileLo  = Profile{Name: "lo"}
	ProfileLAN = Profile{Name: "lan", RTT: time.Millisecond, BandwidthBps: 1_000_000_000 / 8}
	ProfileWAN = Profile{Name: "wan", RTT: 20 * time.Millisecond, BandwidthBps: 100_000_000 / 8}
	// ProfileFar is a registry on another continent: the wan link's
	// bandwidth, five times its round trip.
	ProfileFar = Profile{Name: "far", RTT: 100 * time.Millisecond, BandwidthBps: 100_000_000 / 8}
)

// minSleep is the smallest delay worth a timer. Shorter debts are carried
// in the link clock and paid by a later write, so the average rate is exact
// without a timer per 16 KiB at LAN speed.
const minSleep = 2 * time.Millisecond

// linkBurst is how much link time an idle link keeps for later, as a
// token bucket's depth does (tc's tbf has one too). Without it a single
// response got about 76% of the rate, idle machine or not: a response
// writes a 32 KiB piece, sleeps until the link has sent it, and wakes a
// little late; a link that accrues no credit at all lost that lateness and
// the next write's own time at every piece, where a real link's queue keeps
// sending while the sender is scheduled. Five milliseconds are 62.5 KB at
// 100 Mbit/s: no burst a real link would not carry.
const linkBurst = 5 * time.Millisecond

// direction is one half of the full-duplex link.
type direction int

const (
	down direction = iota // responses, registry to client
	up                    // request bodies, client to registry
)

// link is the shared bandwidth model: for each direction, a virtual clock
// of when the link finishes sending what has been reserved so far. Each
// write (or read of an upload) reserves its transmission time after
// everything reserved before it in its direction (FIFO, like one wire) and
// waits until its last byte would have arrived.
type link struct {
	mu      sync.Mutex
	free    [2]time.Time // per direction, when it is idle again
	profile Profile
}

func (l *link) setProfile(p Profile) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.profile = p
}

func (l *link) current() Profile {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.profile
}

// reserve books n bytes in direction d and returns when they are sent.
func (l *link) reserve(d direction, n int) time.Time {
	return l.reserveAt(d, n, time.Now())
}

// reserveAt is reserve at time now: the link sends after what it holds
// already, and an idle link's clock falls behind now by at most linkBurst.
func (l *link) reserveAt(d direction, n int, now time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.profile.BandwidthBps <= 0 {
		return now
	}
	if idle := now.Add(-linkBurst); l.free[d].Before(idle) {
		l.free[d] = idle
	}
	l.free[d] = l.free[d].Add(time.Duration(int64(n) * int64(time.Second) / l.profile.BandwidthBps))
	return l.free[d]
}

// pace waits until the reserved bytes are sent. Debts under minSleep are
// not slept (see minSleep). It reports false when done or stop ended the
// wait.
func pace(done, stop <-chan struct{}, until time.Time) bool {
	d := time.Until(until)
	if d < minSleep {
		return true
	}
	return sleep(done, stop, d)
}

// sleep waits d, or until done (the request's context) or stop (the
// proxy's Close) is closed; it reports whether the full wait happened.
func sleep(done, stop <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-done:
		return false
	case <-stop:
		return false
	}
}
