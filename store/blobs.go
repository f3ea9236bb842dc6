package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// ErrDigestMismatch is wrapped by errors about bytes that do not match the
// digest they were stored or asked for under.
var ErrDigestMismatch = errors.New("digest mismatch")

// Blobs holds whole blobs by digest: manifests, configs, layer indexes and
// new layers. Writes are atomic and durable; reads are verified.
type Blobs struct {
	dir string // blobs/, holding <algorithm>/<hex>
	tmp string
}

func (b *Blobs) path(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob %q: %w", d, err)
	}
	return filepath.Join(b.dir, d.Algorithm().String(), d.Encoded()), nil
}

// Put stores data under d after checking that it hashes to d.
func (b *Blobs) Put(d digest.Digest, data []byte) error {
	p, err := b.path(d)
	if err != nil {
		return err
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("blob %s: %w (content is %s)", d, ErrDigestMismatch, got)
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	return writeAtomic(b.tmp, p, data, true, 0o600)
}

// Get returns the blob stored under d, verified. A missing blob is an error
// wrapping errdefs.ErrNotFound; a corrupt one is removed and reported as
// ErrDigestMismatch.
func (b *Blobs) Get(d digest.Digest) ([]byte, error) {
	p, err := b.path(d)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		os.Remove(p)
		return nil, fmt.Errorf("blob %s: %w on disk (removed)", d, ErrDigestMismatch)
	}
	return data, nil
}

// WriteFileAtomic writes data to dst, mode perm, so that dst is either as
// it was or complete: a synced temporary file beside it renamed over it.
func WriteFileAtomic(dst string, data []byte, perm os.FileMode) error {
	return writeAtomic(filepath.Dir(dst), dst, data, true, perm)
}

// writeAtomic writes data to a temporary file in tmpDir, optionally fsyncs
// it, and renames it to dst, so dst is either absent or complete.
func writeAtomic(tmpDir, dst string, data []byte, durable bool, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(tmpDir, "ingest-")
	if err != nil {
		return err
	}
	name := f.Name()
	defer os.Remove(name) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if perm != 0o600 { // CreateTemp's
		if err := f.Chmod(perm); err != nil {
			f.Close()
			return err
		}
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(name, dst)
}

// hashFile returns the digest of the file's content with d's algorithm.
func hashFile(f *os.File, d digest.Digest) (digest.Digest, error) {
	h := d.Algorithm().Digester()
	if _, err := io.Copy(h.Hash(), io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return "", err
	}
	return h.Digest(), nil
}

// TempDir is where blobs are written before Ingest moves them in place; it
// is emptied when the store opens, so a crash leaves nothing behind.
func (b *Blobs) TempDir() string { return b.tmp }

// Ingest moves the file at path (written in TempDir) into the store under
// d, after checking that its size is size and that it hashes to d. The file
// is fsynced first, so a blob under a valid name is always whole. On error
// the file is removed.
func (b *Blobs) Ingest(path string, d digest.Digest, size int64) (err error) {
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	dst, err := b.path(d)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != size {
		return fmt.Errorf("blob %s: %d bytes, want %d: %w", d, fi.Size(), size, ErrDigestMismatch)
	}
	got, err := hashFile(f, d)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if got != d {
		return fmt.Errorf("blob %s: %w (content is %s)", d, ErrDigestMismatch, got)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return os.Rename(path, dst)
}

// Open opens the blob stored under d for reading, with its size. It is
// not verified here: whole-blob readers verify as they read (see
// VerifiedReader), ranged readers verify what they decode. A missing blob
// is an error wrapping errdefs.ErrNotFound.
func (b *Blobs) Open(d digest.Digest) (*os.File, int64, error) {
	p, err := b.path(d)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", d, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// Has reports whether a blob is stored under d.
func (b *Blobs) Has(d digest.Digest) bool {
	p, err := b.path(d)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// Path returns where the blob stored under d is (or would be) kept.
func (b *Blobs) Path(d digest.Digest) (string, error) { return b.path(d) }

// VerifiedReader reads rc, the whole blob d, and fails at EOF, instead of
// returning io.EOF, when what was read does not hash to d.
func VerifiedReader(rc io.ReadCloser, d digest.Digest) io.ReadCloser {
	return &verifiedReader{rc: rc, d: d, v: d.Verifier()}
}

type verifiedReader struct {
	rc io.ReadCloser
	d  digest.Digest
	v  digest.Verifier
}

func (r *verifiedReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.v.Write(p[:n])
	if err == io.EOF && !r.v.Verified() {
		return n, fmt.Errorf("blob %s: %w", r.d, ErrDigestMismatch)
	}
	return n, err
}

func (r *verifiedReader) Close() error { return r.rc.Close() }
