//go:build race

package inflate

// raceEnabled says the race detector, which slows compress/gzip's encoder
// tenfold, is on: tests that encode much encode less.
const raceEnabled = true
