package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// Assembly of whole files. An assembler copies a file's chunks from the
// chunk cache into its whole file in file order, as far as they are
// cached, then waits for more. It is started by a read through the daemon
// at the file's start, so a file read in order is assembled while its
// chunks arrive and is complete about when its reader is done — not
// seconds of copying after it (a 1 GiB copy on a 500 MB/s disk), which a
// reader opening the file again at once would miss. It is also started,
// to run to the end, by the release of a file's last daemon open or by an
// open, when every chunk of the file is cached. When the last daemon open
// of an incomplete file is released, its assembler stops at the first
// chunk not cached and its temporary file is removed. Unmount stops all.

// maxAssemblers bounds the files of one layer assembled at once: each
// holds an open temporary file in the store, outside the cache limit.
const maxAssemblers = 8

type assembler struct {
	e     index.Entry
	parts []store.Part
	w     *store.FileWriter
	next  int // the part to copy; moved only by the running goroutine
	start time.Time
	// Guarded by wholeFiles.mu:
	running bool // a goroutine is copying
	final   bool // no reader left: stop at the first part not cached
}

// read is told of every read of a large file through the daemon,
// when whole files are in use: a read from the start begins assembling
// the file, any other read lets a waiting assembler go on.
func (w *wholeFiles) read(e index.Entry, off int64) {
	w.mu.Lock()
	a := w.assemblers[e.Ino]
	w.mu.Unlock()
	if a == nil && off == 0 {
		a = w.newAssembler(e, nil)
	}
	if a != nil {
		w.runAssembler(a, false)
	}
}

// complete runs e's assembly to its end, or to the first part not
// cached: called when the file's last daemon open is released, and when
// the file is opened without a whole file. Without an assembler, one is
// started only if every chunk is cached. parts may be nil.
func (w *wholeFiles) complete(e index.Entry, parts []store.Part) {
	if w == nil {
		return
	}
	w.mu.Lock()
	a := w.assemblers[e.Ino]
	w.mu.Unlock()
	if a == nil {
		if parts == nil {
			var err error
			if parts, err = w.parts(e); err != nil {
				slog.Debug("fs: no whole file", "layer", w.digest, "inode", e.Ino, "error", err)
				return
			}
		}
		if !w.allCached(parts) {
			return
		}
		if a = w.newAssembler(e, parts); a == nil {
			return
		}
	}
	w.runAssembler(a, true)
}

func (w *wholeFiles) allCached(parts []store.Part) bool {
	for _, p := range parts {
		if !w.cache.Has(p.Digest) {
			return false
		}
	}
	return true
}

// newAssembler registers an assembler for e, or returns the one there is;
// nil when e needs none (one chunk, whole file there, too big) or too many
// are running. parts may be nil: they are then read from the index.
func (w *wholeFiles) newAssembler(e index.Entry, parts []store.Part) *assembler {
	if w.life.ctx.Err() != nil {
		return nil
	}
	if parts == nil {
		var err error
		if parts, err = w.parts(e); err != nil {
			slog.Debug("fs: no whole file", "layer", w.digest, "inode", e.Ino, "error", err)
			return nil
		}
	}
	if len(parts) < 2 || w.files.Has(store.FileKey(parts)) {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if a := w.assemblers[e.Ino]; a != nil {
		return a
	}
	if len(w.assemblers) >= maxAssemblers {
		return nil
	}
	fw, err := w.files.NewWriter(parts)
	if err != nil {
		slog.Debug("fs: whole file not assembled", "layer", w.digest, "inode", e.Ino, "error", err)
		return nil
	}
	a := &assembler{e: e, parts: parts, w: fw, start: time.Now()}
	w.assemblers[e.Ino] = a
	return a
}

// runAssembler lets a copy on in the background, unless it is copying
// already or would wait at once for its next part. With final, it ends
// at the first part not cached instead of waiting.
func (w *wholeFiles) runAssembler(a *assembler, final bool) {
	w.mu.Lock()
	a.final = a.final || final
	idle := !a.running && (a.final || w.cache.Has(a.parts[a.next].Digest))
	a.running = a.running || idle
	w.mu.Unlock()
	if idle {
		w.life.goBackground(func(ctx context.Context) { w.assemble(ctx, a) })
	}
}

// assemble copies a's parts while they are cached, and commits the file
// after the last; it returns, leaving a to be resumed, at a part not
// cached yet. Deciding to wait and clearing running happen under w.mu,
// where readers look at running after caching a chunk: none is missed.
func (w *wholeFiles) assemble(ctx context.Context, a *assembler) {
	for a.next < len(a.parts) {
		w.mu.Lock()
		if !w.cache.Has(a.parts[a.next].Digest) {
			if !a.final {
				a.running = false
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
			w.dropAssembler(a, fmt.Errorf("part %d: %w", a.next, errdefs.ErrNotFound))
			return
		}
		w.mu.Unlock()
		if err := a.w.CopyNext(ctx); err != nil {
			w.dropAssembler(a, err)
			return
		}
		a.next++
		if w.afterPart != nil {
			w.afterPart(ctx)
		}
	}
	err := a.w.Commit()
	if err == nil {
		metricFilesAssembled.Inc()
	}
	w.dropAssembler(a, err)
}

// dropAssembler ends a: its temporary file is removed unless committed.
// err is why it ends (nil: committed).
func (w *wholeFiles) dropAssembler(a *assembler, err error) {
	if a == nil {
		return
	}
	w.mu.Lock()
	if w.assemblers[a.e.Ino] == a {
		delete(w.assemblers, a.e.Ino)
	}
	w.mu.Unlock()
	a.w.Close()
	key := store.FileKey(a.parts)
	attrs := []any{"layer", w.digest, "inode", a.e.Ino, "size", a.e.Size, "key", key, "duration", time.Since(a.start)}
	switch {
	case err == nil:
		slog.Debug("fs: whole file assembled", attrs...)
	case errdefs.IsNotFound(err), errors.Is(err, context.Canceled):
		// Not all read, a chunk evicted meanwhile, an unmount: reads go
		// on through the daemon.
		slog.Debug("fs: whole file not assembled", append(attrs, "error", err)...)
	default:
		slog.Warn("fs: whole file not assembled", append(attrs, "error", err)...)
	}
	if w.onWholeDone != nil {
		w.onWholeDone(wholeJob{op: "assemble", key: key}, err)
	}
}

// closeAssemblers ends the assemblers waiting for parts, once no
// background work runs: at unmount.
func (w *wholeFiles) closeAssemblers() {
	w.mu.Lock()
	var left []*assembler
	for _, a := range w.assemblers {
		a.running = true // nothing may resume it now
		left = append(left, a)
	}
	w.mu.Unlock()
	for _, a := range left {
		w.dropAssembler(a, context.Canceled)
	}
}
