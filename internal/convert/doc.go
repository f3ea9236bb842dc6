// Package convert rewrites images into eStargz, the form Strata mounts
// lazily, and pushes them. It uses the estargz package of
// stargz-snapshotter, so the result is readable by every eStargz consumer.
//
// It may import remote and nothing else of Strata, and no FUSE library; of
// containerd's modules only stargz-snapshotter's estargz package and (through
// remote) the errdefs error classes.
package convert
