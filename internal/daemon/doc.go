// Package daemon is strata's long-running process: it owns the store, the
// FUSE servers of every mounted layer, the overlay mounts of images, and
// serves the CLI's control API on a unix socket (and, when configured,
// Prometheus metrics on TCP).
//
// The daemon owns mounts: they live as long as it does. On SIGTERM it
// unmounts everything it served; on start it clears mounts a crashed
// predecessor left behind and mounts again every image recorded in the
// metadata database, from the stored indexes and chunk cache, without
// touching the registry until a file that is not cached is read.
//
// The daemon may import every Strata package except cmd and the test
// infrastructure under test/. Only cmd/strata and internal/build import this
// package (and, to run a daemon in-process, the tests of cmd/strata and
// test/e2e).
package daemon
