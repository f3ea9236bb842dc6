package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// indexBuild is one layer's index being made: fetched and parsed (done),
// then saved in the background (saved). Mounts and prefetches of the same
// layer share it.
type indexBuild struct {
	done  chan struct{}
	view  View // set before done closes, unless err
	err   error
	saved chan struct{} // closed once stored, or once the build failed
}

// loadIndex returns the layer's stored index, or the one being made, or
// makes it. The mount waits for a background save before it unmounts.
func (p *Pool) loadIndex(ctx context.Context, blob layerBlob, pl *pooled, repo name.Repository) (View, error) {
	idx, err := index.Open(p.store.DB(), pl.desc.Digest.String())
	if err == nil {
		return idx, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, err
	}
	// An index pushed to repo, imported (or being imported) for its
	// image: good for repo's images only.
	key := importedKey(pl.desc.Digest, repo)
	if idx, err := index.Open(p.store.DB(), key); err == nil {
		pl.indexFrom = repo.Name()
		return idx, nil
	} else if !errdefs.IsNotFound(err) {
		return nil, err
	}
	p.mu.Lock()
	imp := p.builds[key]
	p.mu.Unlock()
	if imp != nil {
		select {
		case <-imp.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if imp.err == nil {
			pl.indexFrom, pl.indexSaved = repo.Name(), imp.saved
			return imp.view, nil
		}
	}
	b := p.buildIndex(ctx, blob, pl.desc, pl.whole, true)
	select {
	case <-b.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	pl.indexSaved = b.saved
	return b.view, b.err
}

// buildIndex starts (or joins) making the index of layer l from blob;
// whole says that a plain gzip layer may be read whole to index it (see
// readIndex), keep that the chunks read on the way are cached. The caller
// waits on the result's done channel.
func (p *Pool) buildIndex(ctx context.Context, blob layerBlob, l remote.Layer, whole, keep bool) *indexBuild {
	b, started := p.startBuild(l.Digest.String())
	if !started {
		return b
	}
	var cache *store.Chunks
	if keep {
		cache = p.store.Chunks
	}
	built, err := readIndex(context.WithoutCancel(ctx), blob, l, cache, whole)
	p.finishBuild(b, l.Digest.String(), l, built, err)
	return b
}

// importedKey is the store key of an index of layer d pushed to repo and
// imported from there: apart from those of other repositories and from
// the one made here (key d), which any image may use.
func importedKey(d digest.Digest, repo name.Repository) string {
	return d.String() + "@" + repo.Name()
}

// startBuild registers the making of layer d's index, or returns the one
// under way (started false).
func (p *Pool) startBuild(key string) (b *indexBuild, started bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b, ok := p.builds[key]; ok {
		return b, false
	}
	b = &indexBuild{done: make(chan struct{}), saved: make(chan struct{})}
	p.builds[key] = b
	return b, true
}

// finishBuild ends build b of layer l's index, made (built) or failed
// (err): mounts are served from memory at once while it is saved in the
// background, then from disk, so that memory stays bounded. A failed
// save costs a re-index next time.
func (p *Pool) finishBuild(b *indexBuild, key string, l remote.Layer, built *index.Index, err error) {
	if err != nil {
		b.err = err
		p.forgetBuild(key)
		close(b.done)
		close(b.saved)
		return
	}
	view := newSwapView(index.NewMemory(built, l.Size))
	b.view = view
	close(b.done)
	p.saves.Add(1)
	go func() {
		defer p.saves.Done()
		defer close(b.saved)
		defer p.forgetBuild(key)
		start := time.Now()
		if err := index.Save(p.store.DB(), key, built, l.Size); err != nil {
			slog.Error("storing layer index failed; it is kept in memory while mounted", "layer", l.Digest, "error", err)
			return
		}
		stored, err := index.Open(p.store.DB(), key)
		if err != nil {
			slog.Error("reopening stored layer index", "layer", l.Digest, "error", err)
			return
		}
		if err := p.store.AdviseReadAround(); err != nil {
			slog.Warn("index reads stay one page at a time", "error", err)
		}
		view.set(stored)
		slog.Info("layer index stored", "layer", l.Digest, "duration", time.Since(start).Round(time.Millisecond))
	}()
}

func (p *Pool) forgetBuild(key string) {
	p.mu.Lock()
	delete(p.builds, key)
	p.mu.Unlock()
}

// ErrNotLazy is wrapped by the error of Acquire for a layer of a format
// that cannot be mounted lazily (it is index.ErrNotLazy): such a layer has
// to be fetched whole, as the containerd snapshotter lets containerd do.
var ErrNotLazy = index.ErrNotLazy

// readIndex detects the layer's format and reads its index (see
// index.Read); an index is validated before it is returned. A layer of a
// format that cannot be read lazily is refused with index.ErrNotLazy, and
// so is a plain gzip layer unless whole says it may be read whole: it is
// then streamed once, decompressed and indexed in the same pass, and
// served lazily from then on through its checkpoints (index.ReadGzip).
// File data that indexing reads whole anyway (an uncompressed tar's, a
// gzip layer's) is kept in cache, when there is one, so that reading
// those files later fetches nothing.
func readIndex(ctx context.Context, blob layerBlob, l remote.Layer, cache *store.Chunks, whole bool, opts ...index.ReadOption) (*index.Index, error) {
	start := time.Now()
	if cache != nil {
		opts = append(opts, index.WithKeep(func(d digest.Digest, data []byte) {
			if err := cache.Put(d, data); err != nil {
				slog.WarnContext(ctx, "fs: chunk read while indexing not cached", "layer", l.Digest, "error", err)
			}
		}))
	}
	if whole {
		opts = append(opts, index.WithGzip())
	}
	read := func() (*index.Index, error) {
		r := blob.ReaderAt(ctx)
		if whole {
			r = withProgress(ctx, r, l.Digest, l.Size)
		}
		return index.Read(ctx, r, descriptorOf(l), opts...)
	}
	built, err := read()
	if (errors.Is(err, index.ErrInvalid) || errors.Is(err, index.ErrDigestMismatch)) && ctx.Err() == nil {
		// Bytes the registry or the way to it spoiled (a proxy, a cut
		// connection's last bytes) look like a broken layer to a reader
		// that decodes as it goes, before the layer's digest can be
		// checked: read it once more, afresh, before saying so. A layer
		// that is broken is so twice.
		slog.WarnContext(ctx, "layer index failed; reading the layer once more", "layer", l.Digest, "error", err)
		if again, err2 := read(); err2 == nil {
			built, err = again, nil
		} else {
			err = fmt.Errorf("%w (twice: the layer's bytes, as the registry sends them, are not a valid layer of its digest)", err2)
		}
	}
	switch {
	case errors.Is(err, index.ErrSparseFile):
		return nil, fmt.Errorf("layer %s cannot be served: %w (no reader, lazy or whole, and no conversion takes sparse files: the image must be built without them)", l.Digest, err)
	case errors.Is(err, index.ErrNotLazy):
		return nil, fmt.Errorf("layer %s cannot be served lazily; convert the image with 'strata convert SRC DST': %w", l.Digest, err)
	}
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	slog.InfoContext(ctx, "layer indexed", "layer", l.Digest, "format", built.Format,
		"entries", len(built.Entries), "duration", time.Since(start).Round(time.Millisecond))
	return built, nil
}

// descriptorOf is what the index package knows of a layer descriptor.
func descriptorOf(l remote.Layer) index.Descriptor {
	return index.Descriptor{Digest: l.Digest, Size: l.Size, MediaType: string(l.MediaType), Annotations: l.Annotations}
}

// Prefetch starts making, in the background, the indexes of the layers
// not mounted or indexed yet, so that their mounts, when asked for one
// after the other (containerd prepares an image's layers in turn), find
// the index made or under way. Only layers that announce a TOC (eStargz
// or zstd:chunked) are prefetched; failures are left for the mount to
// report.
func (p *Pool) Prefetch(repo name.Repository, layers []remote.Layer, opts ...remote.Option) {
	for _, l := range layers {
		if !AnnouncesTOC(l.Annotations) || l.Digest.Validate() != nil {
			continue
		}
		p.mu.Lock()
		_, mounted := p.layers[l.Digest]
		_, building := p.builds[l.Digest.String()]
		p.mu.Unlock()
		if mounted || building {
			continue
		}
		if _, err := index.Open(p.store.DB(), l.Digest.String()); err == nil {
			continue
		}
		p.saves.Add(1)
		go func() {
			defer p.saves.Done()
			ctx := context.Background()
			blob, err := remote.NewLayerReader(ctx, repo, l, append(slices.Clone(p.ropts), opts...)...)
			if err != nil {
				slog.Debug("fs: index prefetch", "layer", l.Digest, "error", err)
				return
			}
			defer blob.Close()
			<-p.buildIndex(ctx, blob, l, false, true).done
		}()
	}
}

// AnnouncesTOC reports whether a layer's annotations say it has a TOC,
// which makes indexing it cheap: eStargz's TOC digest (which Strata's
// commit sets on zstd:chunked layers too) or zstd:chunked's manifest
// position.
func AnnouncesTOC(annotations map[string]string) bool {
	return annotations[index.AnnotationTOCDigest] != "" || annotations[index.AnnotationZstdChunkedPosition] != ""
}
