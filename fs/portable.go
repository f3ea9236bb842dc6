package fs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
)

// Indexes that travel: a plain gzip or tar layer has no table of
// contents, so its index is made by reading it whole once (readIndex).
// The index can then be exported in its portable form (index.EncodePortable)
// and pushed next to the image; another machine imports it and mounts the
// layer lazily at once. The daemon does the pushing and the fetching.

// IndexLayer makes sure the store holds the index of layer l (read from
// repo), making it when it does not: for a gzip or tar layer that means
// reading the layer whole once. It returns the stored index's Info.
func (p *Pool) IndexLayer(ctx context.Context, repo name.Repository, l remote.Layer, opts ...remote.Option) (index.Info, error) {
	if err := l.Digest.Validate(); err != nil {
		return index.Info{}, fmt.Errorf("layer %q: %w", l.Digest, err)
	}
	if stored, err := index.Open(p.store.DB(), l.Digest.String()); err == nil {
		return stored.Info(), nil
	} else if !errdefs.IsNotFound(err) {
		return index.Info{}, err
	}
	blob, err := p.openBlob(ctx, repo, l, opts)
	if err != nil {
		return index.Info{}, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	defer blob.Close()
	// Only the index is wanted: the layer's content, read whole on the
	// way (hundreds of MB for a big layer), is not cached, which would
	// cost the pass its writes and push out what mounts use.
	b := p.buildIndex(ctx, blob, l, true, false)
	select {
	case <-b.saved:
	case <-ctx.Done():
		return index.Info{}, ctx.Err()
	}
	if b.err != nil {
		return index.Info{}, b.err
	}
	stored, err := index.Open(p.store.DB(), l.Digest.String())
	if err != nil {
		return index.Info{}, fmt.Errorf("layer %s: the index made was not stored: %w", l.Digest, err)
	}
	return stored.Info(), nil
}

// IndexLayerListed reads layer l whole, as IndexLayer does when the store
// holds no index of it, and returns the index it makes with a checkpoint
// before each file listed names, where that shortens the file's first
// read (index.WithListed; a plain gzip layer's). The index is not stored:
// the store keeps the one it has, which mounts may be serving from. The
// caller pushes it (index.EncodePortable) for other machines to mount
// from.
func (p *Pool) IndexLayerListed(ctx context.Context, repo name.Repository, l remote.Layer, listed func(name string) bool, opts ...remote.Option) (*index.Index, error) {
	if err := l.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("layer %q: %w", l.Digest, err)
	}
	blob, err := p.openBlob(ctx, repo, l, opts)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	defer blob.Close()
	return readIndex(ctx, blob, l, nil, true, index.WithListed(listed))
}

// PortableIndex returns the portable form of the stored index of layer l,
// a gzip or tar layer.
func (p *Pool) PortableIndex(l remote.Layer) ([]byte, error) {
	idx, err := index.Load(p.store.DB(), l.Digest.String())
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	return index.EncodePortable(idx, l.Digest, l.Size)
}

// portableDecodes bounds the portable indexes decoded at once to one.
var portableDecodes = make(chan struct{}, 1)

// ErrIndexMismatch is wrapped by ImportIndex's error for an index that is
// not one of the layer it was offered for (index.ErrPortable).
var ErrIndexMismatch = index.ErrPortable

// ImportIndex takes the portable index data as the index of layer l,
// after checking that it describes l and is valid (index.DecodePortable):
// a mount of l is served from it at once while it is stored in the
// background. A layer that has an index stored, or under way, keeps it.
// The index's names, metadata and chunk digests are taken on trust from
// whoever made it; what is served is still verified against them chunk
// by chunk, from l's blob.
func (p *Pool) ImportIndex(ctx context.Context, repo name.Repository, l remote.Layer, data []byte) error {
	if p.HasIndexFor(l.Digest, repo) {
		return nil
	}
	key := importedKey(l.Digest, repo)
	b, started := p.startBuild(key)
	if !started {
		return nil // imported meanwhile
	}
	start := time.Now()
	// One at a time: an index from the registry may decompress to
	// index.MaxPortableSize before it is found wrong, and an image's
	// layers are imported at once.
	portableDecodes <- struct{}{}
	idx, err := index.DecodePortable(data, l.Digest, l.Size)
	<-portableDecodes
	if err != nil {
		err = fmt.Errorf("layer %s: %w", l.Digest, err)
	} else {
		idx.Source = digest.FromBytes(data)
	}
	p.finishBuild(b, key, l, idx, err)
	if err != nil {
		return err
	}
	slog.InfoContext(ctx, "layer index imported", "layer", l.Digest, "format", idx.Format,
		"entries", len(idx.Entries), "checkpoints", len(idx.Checkpoints), "decoded_in", time.Since(start))
	return nil
}

// importedSource is the Source of the index of layer d pushed to repo
// and imported, "" when there is none.
func (p *Pool) importedSource(d digest.Digest, repo name.Repository) digest.Digest {
	key := importedKey(d, repo)
	if idx, err := index.Open(p.store.DB(), key); err == nil {
		return idx.Info().Source
	}
	p.mu.Lock()
	b := p.builds[key]
	p.mu.Unlock()
	if b != nil {
		<-b.done
		if b.err == nil {
			return b.view.Info().Source
		}
	}
	return ""
}

// HasIndexFor reports whether the store holds an index of layer d that
// an image of repo may be mounted with: one made here, or one pushed to
// repo and imported (an index pushed to another repository is taken on
// that repository's trust alone).
func (p *Pool) HasIndexFor(d digest.Digest, repo name.Repository) bool {
	for _, key := range []string{d.String(), importedKey(d, repo)} {
		if _, err := index.Open(p.store.DB(), key); err == nil {
			return true
		}
	}
	return false
}
