// Package index is Strata's one model of a layer's file tree, whatever the
// layer's format: entries (inodes, already in overlayfs form for whiteouts
// and opaque directories), directory listings, and for each regular file
// the chunks that hold its content and the digest each must match.
//
// A format reader (ReadEStargz) turns an untrusted layer blob into an
// Index, refusing hostile input (see tocConverter for the exact rules);
// Validate checks the invariants every consumer relies on; Save persists an
// index in the metadata database, and Open gives a read-only view of it
// that keeps nothing in memory. DecodeChunk is the only way chunk bytes
// reach a reader: it decodes and verifies them together.
//
// index imports no other Strata package and no FUSE library, and of
// containerd's modules only the errdefs error classes and
// stargz-snapshotter's estargz format package (footer, TOC names). Its
// other dependencies are compression (klauspost/compress), go-digest and
// bbolt.
package index
