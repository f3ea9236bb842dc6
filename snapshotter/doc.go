// Package snapshotter turns images into containerd snapshots: it implements
// containerd's snapshots.Snapshotter on kernel overlayfs, serves it over the
// containerd snapshots gRPC API for `proxy_plugins`, and follows containerd's
// remote-snapshot protocol so that lazily mounted layers are never downloaded
// by containerd.
//
// # Model
//
// Every snapshot, whatever its kind, owns one directory:
//
//	<root>/metadata.db           containerd's snapshot metastore (core/snapshots/storage, bbolt)
//	<root>/snapshots/<id>/fs     upperdir of an active snapshot, the content of a committed one,
//	                             or the mountpoint of a remote layer
//	<root>/snapshots/<id>/work   overlayfs workdir (active snapshots only)
//
// <id> is the metastore's numeric snapshot ID, so a directory under
// snapshots/ that the metastore does not know is an orphan, and Cleanup
// removes it.
//
// Mounts are what containerd's overlay snapshotter returns, so that containerd,
// BuildKit and `ctr` need no knowledge of Strata:
//
//	no parent, active        bind <id>/fs rw
//	no parent, view          bind <id>/fs ro
//	one parent, view         bind <parent>/fs ro
//	active with parents      overlay lowerdir=<parents>/fs (nearest first), upperdir, workdir
//	view with >1 parents     overlay lowerdir=<parents>/fs (read-only because there is no upperdir)
//
// # Remote layers
//
// A remote layer is a committed snapshot whose fs directory is a read-only
// mount made by a RemoteLayers implementation (the Strata daemon: one FUSE
// mount per layer). From overlayfs' point of view it is an ordinary lower
// directory, so mounts of its children need nothing special.
//
// The protocol is containerd's (the one stargz-snapshotter uses):
//
//  1. containerd's unpacker calls Prepare(key, parent) with the label
//     containerd.io/snapshot.ref set to the layer's chain ID, plus the CRI
//     labels containerd.io/snapshot/cri.image-ref, cri.layer-digest,
//     cri.image-layers and cri.manifest-digest when CRI pulls the image, or
//     stargz-snapshotter's containerd.io/snapshot/remote/stargz.reference,
//     .digest and .layers when BuildKit, nerdctl or ctr-remote does
//     (ParseRemoteLabels reads either set).
//  2. If the remote snapshot of that snapshot.ref above that parent exists,
//     Prepare returns an error wrapping errdefs.ErrAlreadyExists at once.
//  3. Otherwise the active snapshot is created and RemoteLayers.Mount is
//     called on its fs directory. On success the snapshot is committed with
//     the Prepare labels plus LabelRemote, and Prepare returns an error
//     wrapping errdefs.ErrAlreadyExists: containerd then finds it by its
//     snapshot.ref label and its parent, and skips fetching and applying the
//     layer. It is named after the snapshot.ref, and for a layer with a
//     parent after the parent's name too: above each namespace's locally
//     unpacked layers a snapshot of its own, above remote layers (named the
//     same everywhere) one, shared.
//  4. If Mount fails (ErrNotRemote means "this layer cannot be served
//     lazily", any other error is logged as a failure) the snapshot stays an
//     ordinary active snapshot and containerd unpacks the layer into it.
//
// Remove of a remote snapshot calls RemoteLayers.Unmount before the directory
// is deleted. A directory is never deleted while something is mounted on it:
// what RemoteLayers does not unmount is detached, and if even that fails the
// directory is left for Cleanup, so that removal can never recurse into a
// mounted layer.
//
// Restore re-establishes remote layers after a daemon restart: for each
// committed remote snapshot it calls Check, and on failure Unmount (to clear a
// stale FUSE mount) and Mount again with the labels stored at commit.
//
// # Layers from writable mounts
//
// UpperChanges lists what a build step changed, from its upper directory
// alone. WriteLayer turns those changes into a layer blob for `strata
// commit`: the tar containerd would write (sorted, parents first, PAX,
// numeric owners, every xattr, hardlinks as links, OCI whiteouts), in
// estargz (the default, so that the new layer mounts lazily too), gzip,
// zstd, zstd:chunked or uncompressed, with the blob's digest and size, the
// diffID and uncompressed size, the media type and the descriptor
// annotations. Gzip, zstd and uncompressed layers are written in one pass;
// estargz and zstd:chunked in two, because their builder needs random
// access to the tar. The same changes give the same digests on any machine:
// compression settings are fixed, mtimes are clamped to SOURCE_DATE_EPOCH
// when it is set, and nothing of the filesystem under the upper directory
// (inode numbers, directory sizes, readdir order, atime, ctime) reaches
// the tar.
//
// # Limits
//
// The overlay lowerdir option lists one path per parent. containerd's
// mount.Mount (which is what mounts these, in containerd or in tests) rewrites
// the option to paths relative to their common parent directory, and mounts
// from there, when the options approach one page (4096 bytes); after that
// rewrite each parent costs len(<id>)+4 bytes. Mounts reports a clear error
// when even the relative form cannot fit, which with IDs below 10000 is
// around 450 parents; the kernel's own limit is 500 lower layers.
//
// Idmapped mounts (uidmap/gidmap labels) are not supported yet.
//
// # Dependencies
//
// This package may import containerd (core/snapshots and its metastore,
// core/mount, contrib/snapshotservice, the snapshots API, continuity,
// errdefs), gRPC, golang.org/x, the layer formats' libraries
// (stargz-snapshotter's estargz, klauspost's compress, image-spec and
// go-digest for media types and digests) and the standard library. It may import
// internal/kmount and nothing else of Strata (never fs, store, remote,
// internal/daemon or cmd): the daemon plugs lazy layers in through the
// RemoteLayers interface, which keeps the dependency pointing from cmd to
// here and lets this package be tested without FUSE or a registry. It must
// never import FUSE libraries.
package snapshotter
