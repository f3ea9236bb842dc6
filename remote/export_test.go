package remote

// FlightCallers is how many callers wait for the shared fetch of n bytes
// at off, for tests that must know a caller has joined it.
func FlightCallers(r *BlobReader, off, n int64) int {
	r.flightMu.Lock()
	defer r.flightMu.Unlock()
	if f := r.flights[rangeKey(off, n)]; f != nil {
		return f.callers
	}
	return 0
}
