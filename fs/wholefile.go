package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

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
	return func(c *Content) { c.whole = &wholeFiles{files: files} }
}

// wholeJob names background work on one whole file, for test hooks and
// to run it once: "assemble" or "verify" of a store key (or of a one-chunk
// file's chunk digest).
type wholeJob struct {
	op  string
	key digest.Digest
}

// wholeFiles keeps the whole files of one layer: it opens them for
// passthrough, assembles them from the chunk cache (assemble.go) and
// verifies those an earlier process left. A layer without whole files
// has none (Content.whole is nil).
type wholeFiles struct {
	digest digest.Digest
	idx    View
	cache  *store.Chunks
	files  *store.Files
	life   *lifetime

	mu         sync.Mutex
	busy       map[wholeJob]bool     // whole files being verified
	assemblers map[uint64]*assembler // whole files being assembled, by inode
	// Test hooks, set before the layer is used: afterPart runs after each
	// part an assembly copies, onWholeDone when whole-file work ends.
	afterPart   func(ctx context.Context)
	onWholeDone func(job wholeJob, err error)
}

// parts lists e's content as the parts of a whole file.
func (w *wholeFiles) parts(e index.Entry) ([]store.Part, error) {
	chunks, err := w.idx.Chunks(e.Ino, 0, e.Size)
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

// open opens the local file holding all of e's content: its only
// chunk, or its whole file. When there is none to use yet, it starts what
// makes one in the background — verification of a file an earlier process
// left, or assembly if every chunk is cached — and returns an error
// wrapping store.ErrUnverified or errdefs.ErrNotFound.
func (w *wholeFiles) open(e index.Entry) (*os.File, error) {
	if w == nil {
		return nil, fmt.Errorf("layer %s keeps no whole files: %w", w.digest, errdefs.ErrNotFound)
	}
	parts, err := w.parts(e)
	if err != nil {
		return nil, err
	}
	var f *os.File
	if len(parts) == 1 {
		f, err = w.cache.Open(parts[0].Digest)
	} else {
		f, err = w.files.Open(store.FileKey(parts))
	}
	switch {
	case errors.Is(err, store.ErrUnverified):
		w.verifyAsync(parts)
	case errdefs.IsNotFound(err):
		w.complete(e, parts)
	}
	return f, err
}

// claim marks job as running; false if it already is.
func (w *wholeFiles) claim(job wholeJob) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy[job] {
		return false
	}
	w.busy[job] = true
	return true
}

func (w *wholeFiles) done(job wholeJob, err error) {
	w.mu.Lock()
	delete(w.busy, job)
	w.mu.Unlock()
	if w.onWholeDone != nil {
		w.onWholeDone(job, err)
	}
}

// verifyAsync hashes, in the background, the whole file (or one chunk)
// of parts that an earlier process left, so the next open may use it. A
// corrupt one is removed by the store; the file is assembled again later.
func (w *wholeFiles) verifyAsync(parts []store.Part) {
	job := wholeJob{op: "verify", key: store.FileKey(parts)}
	if len(parts) == 1 {
		job.key = parts[0].Digest
	}
	if w.life.ctx.Err() != nil || !w.claim(job) {
		return
	}
	w.life.goBackground(func(ctx context.Context) {
		var err error
		if len(parts) == 1 {
			err = w.cache.Verify(parts[0].Digest)
		} else {
			err = w.files.Verify(ctx, parts)
		}
		if err != nil && !errdefs.IsNotFound(err) && !errors.Is(err, context.Canceled) {
			// The store logs a corrupt file it removes (not found now);
			// this is other trouble (I/O), worth a line of its own.
			slog.Warn("fs: verifying whole file", "layer", w.digest, "key", job.key, "error", err)
		}
		w.done(job, err)
	})
}
