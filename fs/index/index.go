package index

import (
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index/inflate"
)

// RootIno is the inode number of a layer's root directory. Inode numbers
// are assigned by the format reader, dense from RootIno upward, and are
// stable for a given layer digest: they are persisted with the index.
const RootIno uint64 = 1

// Limits that a format reader enforces on untrusted input. A layer that
// exceeds one is refused with ErrInvalid rather than served partially.
const (
	MaxEntries     = 4 << 20 // entries (files, dirs, links...) in one layer
	MaxChunks      = 16 << 20
	MaxNameLen     = 255  // one path component, as Linux NAME_MAX
	MaxPathLen     = 4096 // whole path, as Linux PATH_MAX
	MaxXattrs      = 128  // xattrs on one entry
	MaxXattrSize   = 64 << 10
	MaxChunkLength = 64 << 20 // decompressed bytes of one chunk
	MaxTOCSize     = 256 << 20
)

// ErrInvalid is wrapped by every error about malformed or hostile layer
// metadata (TOC, index, tar headers).
var ErrInvalid = errors.New("invalid layer index")

// Invalidf returns an error wrapping ErrInvalid.
func Invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Type is the kind of a filesystem entry. Hardlinks are not a type: every
// name of a hardlinked file refers to the same Ino.
type Type uint8

const (
	TypeDir Type = iota + 1
	TypeReg
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFifo
)

func (t Type) String() string {
	switch t {
	case TypeDir:
		return "dir"
	case TypeReg:
		return "reg"
	case TypeSymlink:
		return "symlink"
	case TypeChar:
		return "char"
	case TypeBlock:
		return "block"
	case TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Encoding says how the bytes of a chunk are stored in the blob.
type Encoding uint8

const (
	EncodingRaw  Encoding = iota + 1 // uncompressed bytes, read as they are
	EncodingGzip                     // a gzip stream starting at BlobOffset
	EncodingZstd                     // a zstd stream starting at BlobOffset
	// EncodingDeflate is a span of a plain gzip layer: DEFLATE resumed
	// at the checkpoint whose In is BlobOffset (see Index.Checkpoints).
	EncodingDeflate
)

// Checkpoint is a place in a plain gzip layer where decoding can resume
// (see package inflate). A gzip layer's index keeps one about every
// gzipSpan bytes of the tar; the compressed bytes between two of them
// are a span, fetched by one range request and decoded on its own.
type Checkpoint = inflate.Checkpoint

// Entry is one inode of a layer, already in the form overlayfs expects:
// an OCI whiteout ".wh.x" is an Entry named x of TypeChar with device 0/0,
// and an opaque directory carries the xattr "trusted.overlay.opaque" = "y".
type Entry struct {
	Ino        uint64    `json:"i"`
	Type       Type      `json:"t"`
	Mode       uint32    `json:"m"` // permission bits with setuid/setgid/sticky (07777)
	UID        uint32    `json:"u,omitempty"`
	GID        uint32    `json:"g,omitempty"`
	Size       int64     `json:"s,omitempty"` // regular files: content size; symlinks: len(LinkTarget)
	ModTime    time.Time `json:"mt"`
	LinkTarget string    `json:"l,omitempty"` // symlinks only
	DevMajor   uint32    `json:"dM,omitempty"`
	DevMinor   uint32    `json:"dm,omitempty"`
	// Nlink is the number of names (hardlinks) of a non-directory; 0
	// means 1. A directory has 0, or 1 when the layer holds it without
	// an entry of its own in place of a whiteout (or non-directory) of
	// the same layer: an unpack makes it anew, and it takes nothing from
	// the lower layers' directory of that name (see ImplicitDirs).
	Nlink  uint32            `json:"n,omitempty"`
	Xattrs map[string][]byte `json:"x,omitempty"`
}

// Dirent is a name in a directory. Type is the type of the entry Ino, so
// a directory can be listed without reading its entries.
type Dirent struct {
	Name string `json:"n"`
	Ino  uint64 `json:"i"`
	Type Type   `json:"t"`
}

// Chunk is a piece of a regular file's content and where to find it in the
// blob. Chunks of a file are sorted by FileOffset, cover [0, Size) without
// gaps or overlap, and each is verified against Digest before use.
type Chunk struct {
	FileOffset int64         `json:"fo"`
	Length     int64         `json:"l"`            // decompressed length of this chunk
	BlobOffset int64         `json:"bo"`           // where the (compressed) stream holding the chunk starts
	BlobLength int64         `json:"bl"`           // compressed bytes to fetch from BlobOffset to decode the chunk
	Inner      int64         `json:"in,omitempty"` // decompressed bytes to skip from the stream start
	Encoding   Encoding      `json:"e"`
	Digest     digest.Digest `json:"d"` // digest of the Length decompressed bytes
}

// End returns the file offset just past the chunk.
func (c Chunk) End() int64 { return c.FileOffset + c.Length }

// Index is the whole, in-memory result of reading a layer's metadata. It is
// built once per layer by a format reader, checked with Validate, persisted
// by Save, and afterwards read through the on-disk Layer view so memory
// stays bounded whatever the image size.
type Index struct {
	// Format names the reader that made the index.
	Format Format
	// Entries by inode number; Entries[0] is the root (Ino == RootIno) and
	// Entries[i].Ino == uint64(i)+RootIno.
	Entries []Entry
	// Children of each directory inode, sorted by name.
	Children map[uint64][]Dirent
	// Chunks of each regular file inode with Size > 0.
	Chunks map[uint64][]Chunk
	// PrefetchEnd is where a layer's prioritized files end in the blob
	// (the stream of its prefetch landmark): the files a container reads
	// first, stored first, to fetch right after mounting. 0 when none.
	PrefetchEnd int64
	// Unpacked, for a layer without a lazy reader (plain gzip or zstd)
	// that was fetched whole, is the digest of its uncompressed tar, kept
	// in the store: the chunks are ranges of that tar, not of the layer
	// blob. Packed is the layer blob's format then.
	Unpacked digest.Digest
	Packed   Format
	// TOCDigest is the digest of an eStargz or zstd:chunked layer's TOC
	// JSON when the layer's descriptor named it and the TOC was checked
	// against it: a later descriptor of the same blob that names another
	// is refused (see CheckDescriptor). Empty when no descriptor named it.
	TOCDigest digest.Digest
	// Source is the digest of the portable index (EncodePortable) this
	// one was imported from, pushed to a registry by another machine;
	// empty for an index made here from the layer's own bytes.
	Source digest.Digest
	// Checkpoints of a plain gzip layer (FormatGzip), sorted by In and
	// Out, the first at the start of the layer: its chunks are
	// EncodingDeflate, each inside the span of the checkpoint at its
	// BlobOffset, and their file data offsets are those of the tar.
	Checkpoints []Checkpoint
}
