package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// Whole files. A file whose content is all in one local file can be read
// by the kernel itself (FUSE passthrough), at local-disk speed, instead of
// every read going kernel → daemon → chunk file → /dev/fuse. A file of one
// chunk already is: its chunk file. A file of several chunks gets a whole
// file in the store (store.Files), assembled in the background from its
// cached chunks (see assemble.go) and used from the next open on. A whole
// file left by an earlier daemon is verified in the background before it
// is used, as chunks are.

// minWholeFileSize is the smallest file served from a whole local file.
// What passthrough saves is the daemon round trip of each FUSE read, and
// one read carries up to 1 MiB (MaxWrite): a smaller file costs a read or
// two, which the kernel then keeps in its page cache (FOPEN_KEEP_CACHE),
// while a whole-file copy of it would cost disk, a cache entry, and an
// open file and a backing registration per open.
const minWholeFileSize = index.LargeFileSize

// ContentOption configures a Content.
type ContentOption func(*Content)

// WithWholeFiles lets the layer keep whole copies of its files of 1 MiB
// or more in files, assembled from the chunk cache, for the kernel to read
// directly (FUSE passthrough; see MountLayer). Default: no whole files;
// every read goes through the daemon and the chunk cache.
func WithWholeFiles(files *store.Files) ContentOption {
	return func(c *Content) { c.files = files }
}

// wholeJob names background work on one whole file, for test hooks and
// to run it once: "assemble" or "verify" of a store key (or of a one-chunk
// file's chunk digest).
type wholeJob struct {
	op  string
	key digest.Digest
}

// wholeParts lists e's content as the parts of a whole file.
func (c *Content) wholeParts(e index.Entry) ([]store.Part, error) {
	chunks, err := c.idx.Chunks(e.Ino, 0, e.Size)
	if err != nil {
		return nil, err
	}
	parts := make([]store.Part, len(chunks))
	covered := int64(0)
	for i, ch := range chunks {
		if ch.FileOffset != covered {
			return nil, fmt.Errorf("inode %d: %w: chunk at %d, want %d", e.Ino, index.ErrInvalid, ch.FileOffset, covered)
		}
		parts[i] = store.Part{Digest: ch.Digest, Length: ch.Length}
		covered = ch.End()
	}
	if covered != e.Size || len(parts) == 0 {
		return nil, fmt.Errorf("inode %d: %w: chunks cover %d of %d bytes", e.Ino, index.ErrInvalid, covered, e.Size)
	}
	return parts, nil
}

// openWhole opens the local file holding all of e's content: its only
// chunk, or its whole file. When there is none to use yet, it starts what
// makes one in the background — verification of a file an earlier process
// left, or assembly if every chunk is cached — and returns an error
// wrapping store.ErrUnverified or errdefs.ErrNotFound.
func (c *Content) openWhole(e index.Entry) (*os.File, error) {
	if c.files == nil {
		return nil, fmt.Errorf("layer %s keeps no whole files: %w", c.digest, errdefs.ErrNotFound)
	}
	parts, err := c.wholeParts(e)
	if err != nil {
		return nil, err
	}
	var f *os.File
	if len(parts) == 1 {
		f, err = c.cache.Open(parts[0].Digest)
	} else {
		f, err = c.files.Open(store.FileKey(parts))
	}
	switch {
	case errors.Is(err, store.ErrUnverified):
		c.verifyAsync(parts)
	case errdefs.IsNotFound(err):
		c.completeWhole(e, parts)
	}
	return f, err
}

// claimWhole marks job as running; false if it already is.
func (c *Content) claimWhole(job wholeJob) bool {
	c.wholeMu.Lock()
	defer c.wholeMu.Unlock()
	if c.wholeBusy[job] {
		return false
	}
	c.wholeBusy[job] = true
	return true
}

func (c *Content) doneWhole(job wholeJob, err error) {
	c.wholeMu.Lock()
	delete(c.wholeBusy, job)
	c.wholeMu.Unlock()
	if c.onWholeDone != nil {
		c.onWholeDone(job, err)
	}
}

// verifyAsync hashes, in the background, the whole file (or one chunk)
// of parts that an earlier process left, so the next open may use it. A
// corrupt one is removed by the store; the file is assembled again later.
func (c *Content) verifyAsync(parts []store.Part) {
	job := wholeJob{op: "verify", key: store.FileKey(parts)}
	if len(parts) == 1 {
		job.key = parts[0].Digest
	}
	if c.bgCtx.Err() != nil || !c.claimWhole(job) {
		return
	}
	c.goBackground(func(ctx context.Context) {
		var err error
		if len(parts) == 1 {
			err = c.cache.Verify(parts[0].Digest)
		} else {
			err = c.files.Verify(ctx, parts)
		}
		if err != nil && !errdefs.IsNotFound(err) && !errors.Is(err, context.Canceled) {
			// The store logs a corrupt file it removes (not found now);
			// this is other trouble (I/O), worth a line of its own.
			slog.Warn("fs: verifying whole file", "layer", c.digest, "key", job.key, "error", err)
		}
		c.doneWhole(job, err)
	})
}
