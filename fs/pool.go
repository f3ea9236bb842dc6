package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// Pool mounts layers by digest, once each, however many images or
// snapshots use them, and unmounts a layer when its last user releases it.
type Pool struct {
	store *store.Store
	dir   string // mountpoints: dir/<digest hex prefix>
	ropts []remote.Option

	policy PrefetchPolicy // background fetch of layers read broadly

	hooks ConnectionHooks

	mu        sync.Mutex
	layers    map[digest.Digest]*pooled
	inherited map[digest.Digest]*os.File // live connections to take over
	builds    map[string]*indexBuild     // indexes being made, by store key (indexKey)
	saves     sync.WaitGroup             // index saves running in the background
	links     map[string]*linkEstimate   // by registry host: see inOrder
}

type pooled struct {
	ready chan struct{} // closed when mount and err are set
	hooks ConnectionHooks
	err   error
	refs  int
	dir   string
	mount *LayerMount
	blob  layerBlob
	// sources is the layer's remote blob, which reads from the
	// repositories of every image that acquired it (nil when the layer
	// was local from the start); set with mount.
	sources *sourcesBlob
	// indexFrom is the repository whose pushed index the layer is
	// served from, "" for an index made here; set with mount.
	indexFrom string
	content   *Content
	desc      remote.Layer
	format    index.Format // set with mount
	packed    index.Format // the layer blob's format, for a layer fetched whole
	plain     bool         // index.Info.Plain, set with mount
	info      index.Info   // the index's, set with mount
	// fetchedWhole is what fetching the layer whole took from the
	// registry, before the local blob replaced the remote one.
	fetchedWhole remote.Stats
	dev          uint64 // the mount's device, set with mount (0: not known)
	whole        bool   // fetch the layer whole when it cannot be read lazily
	// resumed is set while a layer whose connection was taken over holds
	// the use ResumeInherited took; wasResumed after Unclaimed dropped it.
	resumed, wasResumed bool
	// indexSaved, when set, closes once a new index is on disk; unmounting
	// waits for it, so the next mount finds the index stored.
	indexSaved <-chan struct{}
}

// LayerStat describes a mounted layer.
type LayerStat struct {
	Digest       digest.Digest
	Dir          string
	Users        int
	BlobSize     int64
	FetchedBytes int64
	Requests     int64
	// Format is the layer's format as its index says (estargz,
	// zstd:chunked, tar); Local, that the blob is read from the store (a
	// layer this machine made) rather than from the registry.
	Format index.Format
	Local  bool
	// Packed, for a layer fetched whole because it cannot be read lazily,
	// is its blob's format (gzip, zstd); Format is then tar.
	Packed index.Format
	// Plain is index.Info.Plain: the layer's mount alone shows the tree
	// of an image made of it alone.
	Plain bool
}

// NewPool returns a pool that mounts layers under dir, reading blobs with
// ropts.
func NewPool(st *store.Store, dir string, ropts ...remote.Option) (*Pool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &Pool{store: st, dir: dir, ropts: ropts, layers: map[digest.Digest]*pooled{}, inherited: map[digest.Digest]*os.File{}, builds: map[string]*indexBuild{}, links: map[string]*linkEstimate{}}, nil
}

// Acquire makes layer l of repo available read-only and returns its
// directory. Concurrent acquisitions of one layer share one mount. A layer
// that cannot be read lazily is refused with ErrNotLazy, unless it was
// fetched whole here before.
func (p *Pool) Acquire(ctx context.Context, repo name.Repository, l remote.Layer, opts ...remote.Option) (string, error) {
	return p.acquire(ctx, repo, l, false, opts)
}

// AcquireWhole is Acquire, but a layer whose index needs the whole layer
// read may be read whole: a plain gzip layer without a stored index is
// streamed once and indexed in the same pass (see readIndex), and a layer
// that cannot be read lazily at all (plain zstd, a gzip layer whose
// blocks are too long to checkpoint) is fetched whole, once, and served
// from the store (see fetchWhole).
func (p *Pool) AcquireWhole(ctx context.Context, repo name.Repository, l remote.Layer, opts ...remote.Option) (string, error) {
	return p.acquire(ctx, repo, l, true, opts)
}

func (p *Pool) acquire(ctx context.Context, repo name.Repository, l remote.Layer, whole bool, opts []remote.Option) (string, error) {
	p.mu.Lock()
	pl, ok := p.layers[l.Digest]
	if ok {
		pl.refs++
		p.mu.Unlock()
		select {
		case <-pl.ready:
		case <-ctx.Done():
			p.Release(l.Digest)
			return "", ctx.Err()
		}
		if pl.err != nil {
			p.Release(l.Digest)
			return "", pl.err
		}
		if err := pl.stillMounted(); err != nil {
			p.Release(l.Digest)
			return "", err
		}
		if err := index.CheckDescriptor(pl.info, descriptorOf(l)); err != nil {
			p.Release(l.Digest)
			return "", err
		}
		if pl.indexFrom != "" && pl.indexFrom != repo.Name() && p.importedSource(l.Digest, repo) != pl.info.Source {
			// An index pushed to one repository is taken on the trust
			// of whoever may push there, for that repository's images
			// alone: another's would read the layer as it says. Unless
			// that repository has the same index pushed too.
			p.Release(l.Digest)
			return "", fmt.Errorf("layer %s is mounted with an index from %s, which is not %s's: it can be mounted for %s once the images using it are unmounted: %w",
				l.Digest, pl.indexFrom, repo.Name(), repo.Name(), errdefs.ErrFailedPrecondition)
		}
		if pl.sources != nil {
			// Another image's repository: read from should the first
			// lose the blob.
			pl.sources.add(repo, opts)
		}
		return pl.dir, nil
	}
	pl = &pooled{ready: make(chan struct{}), refs: 1, desc: l, whole: whole, hooks: p.hooks}
	p.layers[l.Digest] = pl
	p.mu.Unlock()

	pl.err = p.mountLayer(ctx, repo, pl, opts)
	close(pl.ready)
	if pl.err != nil {
		p.Release(l.Digest)
		return "", pl.err
	}
	return pl.dir, nil
}

func (p *Pool) mountLayer(ctx context.Context, repo name.Repository, pl *pooled, opts []remote.Option) error {
	l := pl.desc
	if err := l.Digest.Validate(); err != nil {
		return fmt.Errorf("layer %q: %w", l.Digest, err)
	}
	blob, err := p.openBlob(ctx, repo, l, opts)
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	if _, local := blob.(*localBlob); !local {
		pl.sources = newSourcesBlob(blob, repo, func(ctx context.Context, r name.Repository, o []remote.Option) (layerBlob, error) {
			return p.openRemote(ctx, r, l, o)
		})
		blob = pl.sources
	}
	idx, err := p.loadIndex(ctx, blob, pl, repo)
	if err == nil {
		// An index made before, from another image's descriptor of
		// the blob, is used only if this one agrees with it.
		err = index.CheckDescriptor(idx.Info(), descriptorOf(l))
	}
	if err == nil && idx.Info().Unpacked != "" {
		// Fetched whole before: its tar is in the store.
		local, lerr := p.openUnpacked(idx.Info().Unpacked, idx.Info().BlobSize)
		if lerr == nil {
			blob.Close()
			blob = local
		} else {
			slog.WarnContext(ctx, "the tar of a layer fetched whole is gone from the store", "layer", l.Digest, "error", lerr)
			idx, err = nil, fmt.Errorf("layer %s: its tar is gone from the store: %w", l.Digest, ErrNotLazy)
		}
	}
	if errors.Is(err, ErrNotLazy) && pl.whole {
		lazyErr := err
		var local layerBlob
		local, idx, err = p.fetchWhole(ctx, blob, l)
		// Served from the local blob from now on: what came is
		// counted here.
		p.mu.Lock()
		pl.fetchedWhole = blob.Stats()
		p.mu.Unlock()
		blob.Close()
		blob = local
		if errors.Is(err, errNotCompressed) {
			// Neither compressed nor a tar the lazy reader takes: its
			// refusal says why (a sparse file, an entry type it does
			// not know), which "not gzip nor zstd" would hide. A zstd
			// layer's tar refused says why itself.
			err = lazyErr
		}
	}
	if err != nil {
		if blob != nil {
			blob.Close()
		}
		return err
	}
	pl.dir = p.layerDir(l.Digest)
	content := NewContent(l.Digest, idx, blob, p.store.Chunks, WithWholeFiles(p.store.Files), WithBackground(p.policy),
		withLink(p.link(repo.RegistryStr())))
	cfg := MountConfig{StateDir: p.stateDir()}
	var m *LayerMount
	if dev, init := p.takeInherited(l.Digest, pl.dir); dev != nil {
		m, err = ResumeLayer(pl.dir, dev, init, idx, content, cfg)
		if err != nil {
			// Not served by anyone now: end it, and mount anew.
			slog.WarnContext(ctx, "inherited layer connection not taken over; mounting the layer again", "layer", l.Digest, "error", err)
			p.endConnection(dev, pl.dir)
			if p.hooks.Removed != nil {
				p.hooks.Removed(l.Digest)
			}
		}
	}
	if m == nil {
		if err = os.MkdirAll(pl.dir, 0o755); err == nil {
			m, err = MountLayer(pl.dir, idx, content, cfg)
		}
		if err == nil {
			if herr := p.connectionMade(repo, l, pl.whole, opts, m); herr != nil {
				slog.WarnContext(ctx, "layer connection not kept for a daemon restart", "layer", l.Digest, "error", herr)
			}
		}
	}
	if err != nil {
		content.Close()
		blob.Close()
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	info := idx.Info()
	p.mu.Lock() // Stats reads them
	pl.mount, pl.blob, pl.content, pl.format, pl.packed, pl.plain, pl.info = m, blob, content, info.Format, info.Packed, info.Plain, info
	p.mu.Unlock()
	var st unix.Stat_t
	if unix.Stat(pl.dir, &st) == nil {
		pl.dev = st.Dev
	}
	end := info.PrefetchEnd
	if end > 0 {
		content.Prefetch(0, end)
	}
	content.StartBackground(end)
	return nil
}

// link is the estimate of the link to host's registry, shared by its
// layers: a layer's first fetches start from what the others learnt.
// stillMounted says whether the layer's mount is still at its directory:
// something outside the daemon may have unmounted it, and a bind of the
// bare directory would show an empty image without a word.
func (pl *pooled) stillMounted() error {
	if pl.dev == 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(pl.dir, &st); err != nil {
		return fmt.Errorf("layer %s: its mount at %s: %w", pl.desc.Digest, pl.dir, err)
	}
	if st.Dev != pl.dev {
		return fmt.Errorf("layer %s: its mount at %s was taken away outside the daemon: restart the daemon (it mounts its layers again)", pl.desc.Digest, pl.dir)
	}
	return nil
}

func (p *Pool) link(host string) *linkEstimate {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.links[host]
	if l == nil {
		l = &linkEstimate{}
		p.links[host] = l
	}
	return l
}

// SetPrefetchPolicy sets the background fetch policy of the layers
// mounted from now on (see PrefetchPolicy). Default: auto, no budget.
func (p *Pool) SetPrefetchPolicy(policy PrefetchPolicy) {
	p.policy = policy
}

// openBlob reads the layer from the store when it holds the blob (a layer
// this machine committed), else from the registry.
func (p *Pool) openBlob(ctx context.Context, repo name.Repository, l remote.Layer, opts []remote.Option) (layerBlob, error) {
	if f, size, err := p.store.Blobs.Open(l.Digest); err == nil {
		slog.InfoContext(ctx, "layer served from the local store", "layer", l.Digest)
		return openLocalBlob(f, size, l.Size, l.Digest)
	}
	return p.openRemote(ctx, repo, l, opts)
}

// openRemote opens layer l in repo. The handshake waits for the first
// fetch: a layer whose index and chunks are local (restored, or taken over
// after a crash) mounts and serves with the registry down, and fetches
// fail until it is back.
func (p *Pool) openRemote(ctx context.Context, repo name.Repository, l remote.Layer, opts []remote.Option) (layerBlob, error) {
	return remote.NewLayerReader(context.WithoutCancel(ctx), repo, l,
		append(append(slices.Clone(p.ropts), opts...), remote.WithDeferredHandshake())...)
}

// Release drops one use of layer d, unmounting it after the last.
func (p *Pool) Release(d digest.Digest) error {
	p.mu.Lock()
	pl, ok := p.layers[d]
	if !ok {
		p.mu.Unlock()
		return fmt.Errorf("layer %s: %w", d, errdefs.ErrNotFound)
	}
	pl.refs--
	if pl.refs > 0 {
		p.mu.Unlock()
		return nil
	}
	delete(p.layers, d)
	p.mu.Unlock()
	<-pl.ready
	return pl.close()
}

func (pl *pooled) close() error {
	if pl.indexSaved != nil {
		<-pl.indexSaved
	}
	var errs []error
	if pl.mount != nil {
		errs = append(errs, pl.mount.Unmount())
		os.Remove(pl.dir)
		removeState(pl.mount.cfg.StateDir, pl.dir)
		if pl.hooks.Removed != nil {
			pl.hooks.Removed(pl.desc.Digest)
		}
	}
	if pl.content != nil {
		pl.content.Close() // no fetch or cache write after this
	}
	if pl.blob != nil {
		errs = append(errs, pl.blob.Close())
	}
	return errors.Join(errs...)
}

// Stats lists the mounted layers.
func (p *Pool) Stats() []LayerStat {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []LayerStat
	for d, pl := range p.layers {
		s := LayerStat{Digest: d, Dir: pl.dir, Users: pl.refs, BlobSize: pl.desc.Size}
		if pl.blob != nil {
			bs := pl.blob.Stats()
			s.FetchedBytes, s.Requests = bs.BytesFetched+pl.fetchedWhole.BytesFetched, bs.Requests+pl.fetchedWhole.Requests
			_, s.Local = pl.blob.(*localBlob)
		}
		s.Format, s.Packed, s.Plain = pl.format, pl.packed, pl.plain
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out
}

// Stat returns the stats of one mounted layer.
func (p *Pool) Stat(d digest.Digest) (LayerStat, bool) {
	for _, s := range p.Stats() {
		if s.Digest == d {
			return s, true
		}
	}
	return LayerStat{}, false
}

// Close unmounts every layer, whoever still uses it, and waits for index
// saves still running. Layers close at once, closeParallel at a time: one
// a container still uses waits unmountGrace before its connection is
// aborted, and a stop must not take that long for each of them.
func (p *Pool) Close() error {
	defer p.saves.Wait()
	p.mu.Lock()
	all := make([]*pooled, 0, len(p.layers))
	for _, pl := range p.layers {
		all = append(all, pl)
	}
	p.layers = map[digest.Digest]*pooled{}
	p.mu.Unlock()
	return EachParallel(len(all), closeParallel, func(i int) error {
		<-all[i].ready
		return all[i].close()
	})
}

// closeParallel bounds the layers Pool.Close closes at once: each is
// mostly waiting, for its server to end.
const closeParallel = 64

// EachParallel calls f(0) … f(n-1), at most limit at a time, and joins
// all their errors (errgroup keeps only the first).
func EachParallel(n, limit int, f func(i int) error) error {
	errs := make([]error, n)
	var g errgroup.Group
	g.SetLimit(limit)
	for i := range n {
		g.Go(func() error {
			errs[i] = f(i)
			return nil
		})
	}
	_ = g.Wait() // the calls report through errs
	return errors.Join(errs...)
}
