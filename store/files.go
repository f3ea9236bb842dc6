package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Files is the cache of whole files: all of one regular file's content in
// one local file, assembled from cached chunks, so that a reader — the
// kernel, through FUSE passthrough — can be handed one file instead of
// asking the daemon for every read.
//
// A whole file is keyed by FileKey of its parts, the ordered digests of
// the chunks it is made of, so identical files of different layers,
// chunked alike, share one copy. It is written only by a FileWriter, from
// chunks this process has verified, into a temporary file renamed into
// place once complete: it is correct by construction, and, like a chunk,
// not fsynced. One left by an earlier process is not trusted: Open refuses
// it (ErrUnverified) until Verify has hashed each part against its digest.
//
// Whole files count against the chunk cache's size limit, in its LRU: a
// file is a second copy of its chunks, and whichever of the two is used
// less is evicted first. Evicting a file someone has open (a passthrough
// backing file) is safe: the open file lives on until it is closed.
type Files struct {
	tmp    string
	chunks *Chunks
	lru    *cacheLRU
}

// maxFileShare bounds a whole file to this fraction of the cache limit.
// While it is assembled its chunks are cached too, so it costs twice its
// size; a file near the limit would evict everything else, itself included.
const maxFileShare = 4

// Part is one piece of a whole file, in file order: the digest of its
// bytes (a chunk in the chunk cache) and its length.
type Part struct {
	Digest digest.Digest
	Length int64
}

// FileKey returns the key of the whole file made of parts: the SHA-256 of
// one "digest length\n" line per part.
func FileKey(parts []Part) digest.Digest {
	d := digest.SHA256.Digester()
	for _, p := range parts {
		fmt.Fprintf(d.Hash(), "%s %d\n", p.Digest, p.Length)
	}
	return d.Digest()
}

func fileKey(key digest.Digest) cacheKey { return cacheKey{kindFile, key} }

func checkParts(parts []Part) (size int64, err error) {
	if len(parts) == 0 {
		return 0, errors.New("whole file: no parts")
	}
	for i, p := range parts {
		if err := p.Digest.Validate(); err != nil {
			return 0, fmt.Errorf("whole file part %d: %w", i, err)
		}
		if p.Length <= 0 {
			return 0, fmt.Errorf("whole file part %d: length %d", i, p.Length)
		}
		size += p.Length
	}
	return size, nil
}

// Has reports whether the whole file key is cached (verified or not).
func (f *Files) Has(key digest.Digest) bool {
	return f.lru.has(fileKey(key))
}

// Open opens the whole file key read-only. It does not hash: a file this
// process has neither written nor verified is ErrUnverified; one that is
// not cached is an error wrapping errdefs.ErrNotFound.
func (f *Files) Open(key digest.Digest) (*os.File, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("whole file %q: %w", key, err)
	}
	return f.lru.open(fileKey(key), nil)
}

// Verify hashes the whole file made of parts, part by part, unless this
// process wrote or verified it already. A corrupt file (wrong size, or a
// part that does not hash to its digest) is removed and reported with an
// error wrapping ErrDigestMismatch and errdefs.ErrNotFound; a missing one
// with errdefs.ErrNotFound. Cancelling ctx stops it and keeps the file.
func (f *Files) Verify(ctx context.Context, parts []Part) error {
	if _, err := checkParts(parts); err != nil {
		return err
	}
	file, err := f.lru.open(fileKey(FileKey(parts)), func(file *os.File) error {
		return verifyParts(ctx, file, parts)
	})
	if err != nil {
		return err
	}
	return file.Close()
}

func verifyParts(ctx context.Context, f *os.File, parts []Part) error {
	info, err := f.Stat()
	if err != nil {
		return err
	}
	size, _ := checkParts(parts)
	if info.Size() != size {
		return fmt.Errorf("%w: %d bytes, parts add up to %d", ErrDigestMismatch, info.Size(), size)
	}
	buf := make([]byte, 1<<20)
	off := int64(0)
	for i, p := range parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		h := p.Digest.Algorithm().Digester()
		if _, err := io.CopyBuffer(h.Hash(), io.NewSectionReader(f, off, p.Length), buf); err != nil {
			return err
		}
		if got := h.Digest(); got != p.Digest {
			return fmt.Errorf("%w: part %d at %d is %s, want %s", ErrDigestMismatch, i, off, got, p.Digest)
		}
		off += p.Length
	}
	return nil
}

// Probe returns an empty regular file, already unlinked, on the
// filesystem whole files live on: a caller can find out with it whether
// that filesystem can back something (FUSE passthrough refuses backing
// files on stacked filesystems such as overlayfs) before relying on it.
// The caller closes it.
func (f *Files) Probe() (*os.File, error) {
	p, err := os.CreateTemp(f.tmp, "probe-")
	if err != nil {
		return nil, err
	}
	os.Remove(p.Name())
	return p, nil
}

// FileWriter assembles one whole file from the chunk cache, a part at a
// time, in a temporary file: Commit makes it visible under its key, Close
// without Commit removes it. Nothing half-written is ever visible.
type FileWriter struct {
	files     *Files
	parts     []Part
	size      int64
	next      int // the part CopyNext copies
	tmp       *os.File
	committed bool
}

// NewWriter starts assembling the whole file made of parts. Files over a
// quarter of the cache limit are refused (errdefs.ErrResourceExhausted).
// The caller must Close the writer.
func (f *Files) NewWriter(parts []Part) (*FileWriter, error) {
	size, err := checkParts(parts)
	if err != nil {
		return nil, err
	}
	if size > f.lru.limit/maxFileShare {
		return nil, fmt.Errorf("whole file of %d bytes: over 1/%d of the cache limit %d: %w",
			size, maxFileShare, f.lru.limit, errdefs.ErrResourceExhausted)
	}
	tmp, err := os.CreateTemp(f.tmp, "file-")
	if err != nil {
		return nil, fmt.Errorf("whole file: %w", err)
	}
	return &FileWriter{files: f, parts: parts, size: size, tmp: tmp}, nil
}

// Key returns the key the file is committed under.
func (w *FileWriter) Key() digest.Digest { return FileKey(w.parts) }

// CopyNext appends the next part from the chunk cache, hashing its chunk
// first if this process has not yet. A chunk no longer cached is an
// error wrapping errdefs.ErrNotFound.
func (w *FileWriter) CopyNext(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.next >= len(w.parts) {
		return errors.New("whole file: every part is copied already")
	}
	p := w.parts[w.next]
	n, err := w.files.chunks.copyTo(w.tmp, p.Digest)
	if err != nil {
		return fmt.Errorf("whole file part %d: %w", w.next, err)
	}
	if n != p.Length {
		return fmt.Errorf("whole file part %d: chunk %s has %d bytes, want %d", w.next, p.Digest, n, p.Length)
	}
	w.next++
	return nil
}

// Commit renames the complete file into place and accounts it in the
// cache, which may evict other entries.
func (w *FileWriter) Commit() error {
	if w.committed {
		return nil
	}
	if w.next != len(w.parts) {
		return fmt.Errorf("whole file: %d of %d parts copied", w.next, len(w.parts))
	}
	if err := w.tmp.Close(); err != nil {
		return fmt.Errorf("whole file: %w", err)
	}
	k := fileKey(w.Key())
	dst := w.files.lru.path(k)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("whole file: %w", err)
	}
	if err := os.Rename(w.tmp.Name(), dst); err != nil {
		return fmt.Errorf("whole file: %w", err)
	}
	w.committed = true
	w.files.lru.add(k, w.size)
	return nil
}

// Close removes the temporary file unless it was committed.
func (w *FileWriter) Close() error {
	if w.committed {
		return nil
	}
	w.tmp.Close()
	if err := os.Remove(w.tmp.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
