// Package pull puts an image into containerd's image store for Strata's
// snapshotter without downloading its layers: the equivalent of
// stargz-snapshotter's `ctr-remote image rpull`, behind `strata pull`.
//
// It pulls with containerd's client-side puller (content and images
// services over gRPC, the unpacker in this process), not the transfer
// service, so that it works against containerd 1.6 and 1.7 as well as 2.x.
// A handler wrapper (AppendLayerLabels) writes the remote-snapshot labels
// on every layer descriptor of the manifest; containerd's unpacker passes
// annotations under containerd.io/snapshot/ to the snapshotter's Prepare as
// labels, and Strata's snapshotter mounts such layers lazily and answers
// "already exists", so the unpacker never fetches them. Layers Strata
// cannot serve lazily are fetched and unpacked by containerd as usual.
//
// This package may import containerd's client packages and, of Strata, the
// snapshotter package (for its label names) and what it imports
// (internal/kmount), and nothing else: never fs, store, remote or
// internal/daemon, since pulling needs only containerd, never Strata's
// daemon directly.
package pull
