// Package kmount holds the kernel mount helpers that the layer mounts (fs),
// the snapshotter and the daemon share: overlayfs and read-only bind
// mounts, unmounting that copes with busy and dead (ENOTCONN) mounts, and
// the mount table, read through moby/sys/mountinfo.
//
// It is a leaf: it may import the standard library, golang.org/x/sys and
// github.com/moby/sys/mountinfo, and never another Strata package, FUSE or
// containerd.
package kmount
