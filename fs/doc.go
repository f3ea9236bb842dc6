// Package fs is how a layer's bytes look as files: it turns a stored
// layer index into a read-only FUSE file tree (one go-fuse server per
// layer), reads file content chunk by chunk through the verified chunk
// cache, fetching and verifying missing chunks from the layer blob, and
// merges layer mounts with kernel overlayfs.
//
// Contract:
//   - Nothing unverified is served: a chunk is decoded and checked against
//     its digest before any byte of it reaches a reader or the cache. A
//     mismatch is EIO for the reader, a log line and a metric. A file the
//     kernel reads itself (FUSE passthrough) is read from a whole local
//     file this process assembled from verified chunks or hashed itself.
//   - Layers are immutable, so the kernel may cache entries, attributes,
//     negative lookups and page contents for as long as it likes.
//   - A read blocks at most as long as the blob reader's request timeout;
//     a registry that is gone makes reads fail with EIO, never hang a mount.
//   - Whiteouts and opaque directories are already in overlayfs form in the
//     index (see package index), so the kernel's overlayfs applies them.
//
// fs may import store, remote, fs/index and internal/kmount, and nothing
// else of Strata (never snapshotter, internal/daemon or cmd). Of containerd's
// modules it may import only the errdefs error classes and
// stargz-snapshotter's estargz format package (which fs/index reads).
package fs
