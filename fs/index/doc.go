// Package index is Strata's one model of a layer's file tree, whatever the
// layer's format: entries (inodes, already in overlayfs form for whiteouts
// and opaque directories), directory listings, and for each regular file
// the chunks that hold its content and the digest each must match.
//
// Every format goes through one seam: Read detects a layer's format
// (Detect: media type, annotations, magic numbers, footers) and hands the
// blob to that format's reader (ReadEStargz, ReadZstdChunked, ReadTar), which feeds the
// archive's entries to the one tar-to-tree builder every format shares
// (names, whiteouts, opaque directories, hardlinks, implicit parents,
// replaced entries: see treeBuilder) and adds each file's verified
// chunks. A format without a reader is refused with ErrNotLazy; hostile
// input with ErrInvalid. Validate checks the invariants every consumer
// relies on; Save persists an index in the metadata database, and Open
// gives a read-only view of it that keeps nothing in memory. DecodeChunk is the only way chunk bytes
// reach a reader: it decodes and verifies them together.
//
// index imports no other Strata package but its own decoder, fs/index/inflate,
// and no FUSE library, and of
// containerd's modules only the errdefs error classes and
// stargz-snapshotter's estargz format packages (footers, TOC names,
// annotations). Its other dependencies are compression
// (klauspost/compress), go-digest and bbolt.
package index
