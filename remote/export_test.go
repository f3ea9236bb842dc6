package remote

import "strconv"

// FlightCallers is how many callers wait for the shared fetch of n bytes
// at off, for tests that must know a caller has joined it.
func FlightCallers(r *BlobReader, off, n int64) int {
	r.flightMu.Lock()
	defer r.flightMu.Unlock()
	if f := r.flights[strconv.FormatInt(off, 10)+"+"+strconv.FormatInt(n, 10)]; f != nil {
		return f.callers
	}
	return 0
}
