// Command stargz-bench mounts an eStargz image with stargz-snapshotter's own
// FUSE filesystem (github.com/containerd/stargz-snapshotter/fs), one FUSE
// mount per layer merged by kernel overlayfs, the way stargz-store and the
// stargz snapshotter present layers. It exists only so `make bench` can
// measure stargz-snapshotter on the same images, through the same proxy, as
// Strata.
//
//	stargz-bench --root DIR REF MOUNTPOINT
//
// prints "ready" on stdout once the merged tree is mounted, then serves until
// SIGTERM/SIGINT and unmounts everything.
//
//	stargz-bench --root DIR --snapshotter-socket SOCKET
//
// serves stargz-snapshotter's own snapshotter
// (service.NewStargzSnapshotterService, what containerd-stargz-grpc runs)
// through containerd's contrib/snapshotservice on SOCKET, for the
// containerd comparison, where containerd loads it as the proxy plugin
// "stargz". It also prints "ready", and on SIGTERM/SIGINT closes the
// snapshotter, which unmounts its layers.
//
// It is its own Go module so stargz-snapshotter's dependency tree never
// enters Strata's go.mod. It must never import Strata's packages.
package main
