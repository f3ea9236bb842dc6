// Package proxy is a loopback HTTP reverse proxy put between a client under
// test (Strata, skopeo, ggcr) and a test registry. It counts requests,
// response bytes and uploaded (request body) bytes exactly, shapes traffic
// like a full-duplex network link (round-trip latency, and a bandwidth cap
// shared by all concurrent responses, and another by all uploads), and
// injects faults (error statuses, flipped bytes, dropped connections).
//
// Counting is what laziness tests assert on ("mounting fetched no blob
// bytes", "reading one file fetched one chunk"); shaping is what benchmarks
// run under (ProfileLo, ProfileLAN, ProfileWAN); faults prove retries and
// verification.
//
// Counters, a log entry's Status and its Fault mark are updated before
// bytes reach the client, so once a client has read a response, Stats
// already includes it. A dropped connection (Down) is recorded, Done, before
// the connection is closed. Other log entries are complete (Done) only when
// the handler has returned, which may be just after the client has read a
// body of known length.
//
// This package is test infrastructure. It must never import Strata's own
// packages (remote, store, fs, snapshotter, internal, cmd).
package proxy
