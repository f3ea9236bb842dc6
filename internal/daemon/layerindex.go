package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
)

// Layer indexes in the registry. A plain gzip or tar layer has no table of
// contents: the first machine to mount it reads it whole once to index it
// (fs.Pool.IndexLayer). `strata index` (or `strata mount --index-push`)
// pushes those indexes, in their portable form, as one OCI artifact whose
// subject is the image; a later mount anywhere finds the artifact, checks
// it, stores the indexes and mounts the layers lazily at once.
//
// What an index from a registry is trusted for: the layer's names,
// metadata and which bytes of the blob hold each file, as whoever pushed
// it says. It is only used when it is bound to the image and its layers
// exactly (the artifact's subject is the image's manifest digest, it
// lists the image's layer digests in order, each index names its layer's
// digest and size), and it must pass the same validation as an index
// made here. What is served is still verified chunk by chunk against the
// index's digests, from the layer blob itself. An index that fails any
// check is logged and not used: the layer is read whole and indexed here.

// LayerIndexArtifactType is the artifact type of pushed layer indexes.
const LayerIndexArtifactType = "application/vnd.stratafs.layer-index.v1"

// Annotations of a layer index artifact: on each blob, the digest of the
// layer it indexes; on the manifest, the image's layer digests, bottom to
// top, comma-separated.
const (
	annotationIndexedLayer = "dev.stratafs.layer.digest"
	annotationImageLayers  = "dev.stratafs.image.layers"
)

// Values of Config.LayerIndexes.
const (
	LayerIndexesAuto = "auto"
	LayerIndexesOff  = "off"
)

// indexParallel is how many layers `strata index` reads at a time.
const indexParallel = 3

// indexImage makes the indexes of req.Ref's gzip and tar layers (reading
// each such layer whole once, unless the store holds its index) and
// pushes them to its repository.
func (im *images) indexImage(ctx context.Context, req IndexRequest, progress func(string, ...any)) (*IndexResult, error) {
	prio, err := cleanPaths(req.Prioritize)
	if err != nil {
		return nil, err
	}
	img, _, err := im.resolve(ctx, req.Ref, req.Platform, req.Insecure)
	if err != nil {
		return nil, err
	}
	if err := im.d.store.Blobs.Put(img.Digest, img.Manifest); err != nil {
		return nil, fmt.Errorf("storing the manifest: %w", err)
	}
	layers := make([]Layer, len(img.Layers))
	for i, l := range img.Layers {
		layers[i] = layerOf(l)
	}
	res := &IndexResult{Ref: req.Ref, Digest: img.Digest, Layers: make([]IndexedLayer, len(layers))}
	repo := img.Repo
	opts := im.remoteOptions(req.Insecure, repo.RegistryStr())
	// With a list, every layer is read again and its index, made with
	// checkpoints before the listed files, kept here for the push.
	var made []*index.Index
	if len(prio) > 0 {
		made = make([]*index.Index, len(layers))
	}
	listed := map[string]bool{}
	for _, p := range prio {
		listed[p] = true
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(indexParallel)
	for i, l := range layers {
		g.Go(func() error {
			start := time.Now()
			var info index.Info
			var err error
			if made != nil {
				var idx *index.Index
				idx, err = im.d.pool.IndexLayerListed(gctx, repo, l.remote(), func(name string) bool { return listed[name] }, opts...)
				if err == nil {
					made[i] = idx
					info = index.NewMemory(idx, l.Size).Info()
				}
			} else {
				info, err = im.d.pool.IndexLayer(gctx, repo, l.remote(), opts...)
				if err == nil && info.Unpacked != "" {
					// Fetched whole here before: its stored index
					// describes the local tar, not the layer, which
					// has no index to push.
					err = fmt.Errorf("%w: a %s layer, fetched whole", fs.ErrNotLazy, info.Packed)
					info = index.Info{}
				}
			}
			il := IndexedLayer{Digest: l.Digest, Format: string(info.Format), Entries: info.Entries, Checkpoints: info.Checkpoints}
			switch {
			case errors.Is(err, fs.ErrNotLazy):
				il.Note = "cannot be indexed; a mount fetches it whole"
			case err != nil:
				return fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err)
			}
			mu.Lock()
			res.Layers[i] = il
			mu.Unlock()
			progress("layer %d of %d: %s, %s (%s)", i+1, len(layers), l.Digest, layerIndexState(il), time.Since(start).Round(time.Millisecond))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// The list is checked before anything is pushed.
	var list *fs.PrefetchList
	if made != nil {
		list = listedFiles(img.Digest, layers, made, prio)
		res.Listed, res.Missing = len(list.Files), missingPaths(prio, list)
		if len(list.Files) == 0 {
			if n := notIndexed(res.Layers); n > 0 {
				return nil, fmt.Errorf("none of the %d paths listed is a regular file of a layer of %s that can be indexed "+
					"(%d of its %d layers cannot be, and their files cannot be listed): nothing pushed", len(prio), req.Ref, n, len(layers))
			}
			return nil, fmt.Errorf("none of the %d paths listed is a regular file in %s: nothing pushed", len(prio), req.Ref)
		}
		if len(res.Missing) > 0 {
			progress("%d of the %d paths listed are no regular file in the image: %s", len(res.Missing), len(prio), strings.Join(firstN(res.Missing, 5), ", "))
		}
	}
	portable := func(i int, l Layer) ([]byte, error) { return im.d.pool.PortableIndex(l.remote()) }
	if made != nil {
		portable = func(i int, l Layer) ([]byte, error) { return index.EncodePortable(made[i], l.Digest, l.Size) }
	}
	blobs, err := im.portableIndexes(layers, res.Layers, portable)
	if err != nil {
		return nil, err
	}
	if len(blobs) == 0 {
		progress("no layer needs an index: none pushed")
	} else {
		res.Artifact, err = im.pushLayerIndexes(ctx, repo, req.Insecure, img.Digest, layers, blobs)
		if err != nil {
			return nil, fmt.Errorf("pushing the layer indexes: %w", err)
		}
		im.noIndexes.forget(repo, img.Digest)
		progress("pushed the indexes of %d layers as %s@%s", len(blobs), repo, res.Artifact)
	}
	if list == nil {
		return res, nil
	}
	b, err := list.Marshal()
	if err != nil {
		return nil, err
	}
	res.PrefetchList, err = im.pushReferrer(ctx, repo, req.Insecure, img.Digest, fs.PrefetchListMediaType,
		[]artifactBlob{{mediaType: fs.PrefetchListMediaType, data: b}}, nil)
	if err != nil {
		return nil, fmt.Errorf("pushing the prefetch list: %w", err)
	}
	// This machine's next mount has it at once, whatever the registry
	// was found to hold before.
	im.noLists.forget(repo, img.Digest)
	if err := im.keepPrefetchList(img.Digest, b); err != nil {
		slog.WarnContext(ctx, "the prefetch list pushed is not kept here", "image", img.Digest, "error", err)
	}
	progress("pushed the prefetch list of %d files as %s@%s", len(list.Files), repo, res.PrefetchList)
	return res, nil
}

// cleanPaths turns the paths of a prioritized list into names relative to
// the image's root, as layers store them, without duplicates.
func cleanPaths(paths []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		c, err := fs.CleanListedPath(p)
		if err != nil {
			return nil, fmt.Errorf("prioritized path %q: %w", p, err)
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// listedFiles is the prefetch list of image that names, in order, each of
// paths that the image holds as a regular file, in the layer it comes
// from (layers without an index, idxs[i] nil, are taken to hold none).
func listedFiles(image digest.Digest, layers []Layer, idxs []*index.Index, paths []string) *fs.PrefetchList {
	list := &fs.PrefetchList{MediaType: fs.PrefetchListMediaType, Image: image, Layers: make([]digest.Digest, len(layers))}
	views := make([]*index.Memory, len(layers))
	for i, l := range layers {
		list.Layers[i] = l.Digest
		if idxs[i] != nil {
			views[i] = index.NewMemory(idxs[i], l.Size)
		}
	}
	for _, p := range paths {
		if i, ok := regularIn(views, p); ok {
			list.Files = append(list.Files, fs.ListedFile{Layer: i, Path: p})
		}
	}
	return list
}

// regularIn says which of layers (bottom to top) the regular file at path
// p of their union comes from, as overlayfs stacks them: the topmost layer
// with an entry at p, unless a layer above it hides p (a whiteout of p or
// of a parent, a parent that is no directory, or an opaque parent).
func regularIn(layers []*index.Memory, p string) (int, bool) {
	names := strings.Split(p, "/")
	for i := len(layers) - 1; i >= 0; i-- {
		v := layers[i]
		if v == nil {
			continue
		}
		ino, opaque := uint64(index.RootIno), false
		for j, name := range names {
			e, found, err := v.Lookup(ino, name)
			switch {
			case err != nil:
				return 0, false
			case !found && opaque:
				return 0, false // an opaque parent hides the layers below
			case !found:
			case j == len(names)-1:
				return i, e.Type == index.TypeReg // anything else at p hides the layers below
			case e.Type != index.TypeDir:
				return 0, false
			}
			if !found {
				break
			}
			opaque = opaque || string(e.Xattrs[index.XattrOverlayOpaque]) == "y"
			ino = e.Ino
		}
	}
	return 0, false
}

// missingPaths are the paths list does not name.
func missingPaths(paths []string, list *fs.PrefetchList) []string {
	named := map[string]bool{}
	for _, f := range list.Files {
		named[f.Path] = true
	}
	var out []string
	for _, p := range paths {
		if !named[p] {
			out = append(out, p)
		}
	}
	return out
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }

// layerIndexState says in a few words what indexing did to a layer.
func layerIndexState(il IndexedLayer) string {
	switch {
	case il.Note != "" && il.Format != "":
		return il.Format + ": " + il.Note
	case il.Note != "":
		return il.Note
	}
	return fmt.Sprintf("%s, %d entries", il.Format, il.Entries)
}

// remote is the layer's descriptor for the pool.
func (l Layer) remote() remote.Layer {
	return remote.Layer{Digest: l.Digest, Size: l.Size, MediaType: types.MediaType(l.MediaType), Annotations: l.Annotations, URLs: l.URLs}
}

// layerOf is the API's form of descriptor l.
func layerOf(l remote.Layer) Layer {
	return Layer{Digest: l.Digest, Size: l.Size, MediaType: string(l.MediaType), Annotations: l.Annotations, URLs: l.URLs}
}

// portableIndexes returns the portable indexes of the layers whose
// stored index needs the layer read whole to make (gzip and tar), and
// notes on the others why they need none.
func (im *images) portableIndexes(layers []Layer, out []IndexedLayer, portable func(int, Layer) ([]byte, error)) ([]artifactBlob, error) {
	var blobs []artifactBlob
	done := map[digest.Digest]bool{}
	for i, l := range layers {
		il := &out[i]
		switch {
		case il.Note != "":
			continue
		case il.Format != string(index.FormatGzip) && il.Format != string(index.FormatTar):
			il.Note = "carries its own table of contents"
			continue
		case done[l.Digest]:
			il.Note = "indexed above (the same layer twice)"
			continue
		}
		b, err := portable(i, l)
		if err != nil {
			return nil, err
		}
		done[l.Digest] = true
		il.IndexBytes = int64(len(b))
		blobs = append(blobs, artifactBlob{mediaType: index.PortableMediaType, data: b,
			annotations: map[string]string{annotationIndexedLayer: l.Digest.String()}})
	}
	return blobs, nil
}

// pushLayerIndexes pushes blobs, the portable indexes of some of the
// image's layers, as one artifact whose subject is the image.
func (im *images) pushLayerIndexes(ctx context.Context, repo name.Repository, insecure bool, image digest.Digest, layers []Layer, blobs []artifactBlob) (digest.Digest, error) {
	return im.pushReferrer(ctx, repo, insecure, image, LayerIndexArtifactType, blobs,
		map[string]string{annotationImageLayers: joinDigests(layers)})
}

func joinDigests(layers []Layer) string {
	ds := make([]string, len(layers))
	for i, l := range layers {
		ds[i] = l.Digest.String()
	}
	return strings.Join(ds, ",")
}

// pushMountIndexes pushes the indexes the store holds of m's gzip and tar
// layers (see MountRequest.IndexPush).
func (im *images) pushMountIndexes(ctx context.Context, m *Mount) (digest.Digest, error) {
	repo, err := name.NewRepository(m.Repo, im.nameOptions(m)...)
	if err != nil {
		return "", err
	}
	opts := im.remoteOptions(m.Insecure, repo.RegistryStr())
	out := make([]IndexedLayer, len(m.Layers))
	for i, l := range m.Layers {
		// Indexed by the mount: this waits for the index's save at most.
		info, err := im.d.pool.IndexLayer(ctx, repo, l.remote(), opts...)
		if err != nil {
			// Fetched whole (plain zstd): there is no index to push.
			out[i].Note = "has no index"
			continue
		}
		out[i].Format = string(info.Format)
		if info.Unpacked != "" {
			out[i].Note = "was fetched whole"
		}
	}
	blobs, err := im.portableIndexes(m.Layers, out, func(_ int, l Layer) ([]byte, error) { return im.d.pool.PortableIndex(l.remote()) })
	if err != nil || len(blobs) == 0 {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 4*im.d.cfg.FetchTimeout.Duration)
	defer cancel()
	return im.pushLayerIndexes(ctx, repo, m.Insecure, m.Digest, m.Layers, blobs)
}

// needsIndex reports whether a layer of an image in repo is one whose
// index the registry may hold: no table of contents announced, not zstd
// (which has no index), and none stored here that repo's images may use.
func (im *images) needsIndex(repo name.Repository, l Layer) bool {
	return !fs.AnnouncesTOC(l.Annotations) && !strings.Contains(l.MediaType, "zstd") && !im.d.pool.HasIndexFor(l.Digest, repo)
}

// importMountIndexes looks in m's registry for pushed indexes of m's
// layers (see importLayerIndexes). An image described by the store
// (stored) asks the registry nothing, as for prefetch lists.
func (im *images) importMountIndexes(ctx context.Context, m *Mount, stored bool) {
	if stored {
		return
	}
	repo, err := name.NewRepository(m.Repo, im.nameOptions(m)...)
	if err != nil {
		return
	}
	im.importLayerIndexes(ctx, repo, m.Insecure, m.Digest, m.Layers)
}

// indexImport is importLayerIndexes running for image: done is closed
// when it has returned.
type indexImport struct {
	image digest.Digest
	done  chan struct{}
}

// startIndexImport runs importLayerIndexes for the image manifest d of
// repo, whose layers are layers, in the background (see mount).
func (im *images) startIndexImport(ctx context.Context, repo name.Repository, insecure bool, d digest.Digest, layers []remote.Layer) *indexImport {
	ii := &indexImport{image: d, done: make(chan struct{})}
	ls := make([]Layer, len(layers))
	for i, l := range layers {
		ls[i] = layerOf(l)
	}
	go func() {
		defer close(ii.done)
		im.importLayerIndexes(ctx, repo, insecure, d, ls)
	}()
	return ii
}

// importLayerIndexes looks in repo for pushed indexes of those of the
// image's layers that need one, and stores those that pass every check,
// so that the layers mount lazily. Anything wrong is logged; the layers
// are then indexed here (or, for containerd, unpacked by it).
func (im *images) importLayerIndexes(ctx context.Context, repo name.Repository, insecure bool, image digest.Digest, layers []Layer) {
	if im.d.cfg.LayerIndexes == LayerIndexesOff || im.noIndexes.recent(repo, image) {
		return
	}
	want := map[digest.Digest]Layer{}
	for _, l := range layers {
		if im.needsIndex(repo, l) {
			want[l.Digest] = l
		}
	}
	if len(want) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*im.d.cfg.FetchTimeout.Duration)
	defer cancel()
	refs, err := im.referrers(ctx, repo, insecure, image, LayerIndexArtifactType)
	if err != nil {
		slog.WarnContext(ctx, "looking for layer indexes in the registry", "image", image, "error", err)
		return
	}
	if len(refs) == 0 {
		im.noIndexes.note(repo, image)
	}
	for _, r := range refs {
		if len(want) == 0 {
			return
		}
		err := r.load()
		if err == nil {
			err = im.importFrom(ctx, repo, r, layers, want)
		}
		if err != nil {
			slog.WarnContext(ctx, "layer index artifact not used", "image", image, "artifact", r.digest, "why", err)
		}
	}
}

// importFrom stores the indexes in artifact r of the layers in want,
// deleting from want those stored. An artifact not bound to the image's
// layers exactly is refused whole; a bad index in it is skipped.
func (im *images) importFrom(ctx context.Context, repo name.Repository, r referrer, layers []Layer, want map[digest.Digest]Layer) error {
	if got := r.manifest.Annotations[annotationImageLayers]; got != joinDigests(layers) {
		return fmt.Errorf("it names the layers %q, not the image's", got)
	}
	inImage := map[string]bool{}
	for _, l := range layers {
		inImage[l.Digest.String()] = true
	}
	for _, desc := range r.manifest.Layers {
		if ld := desc.Annotations[annotationIndexedLayer]; string(desc.MediaType) != index.PortableMediaType || !inImage[ld] {
			return fmt.Errorf("blob %s (%s) is not the index of a layer of the image (it names %q)", desc.Digest, desc.MediaType, ld)
		}
	}
	// The layers' indexes are fetched and imported side by side: one
	// layer's fetch need not wait for the one before to be decoded and
	// stored (a mount waits for them all).
	var mu sync.Mutex
	var wg sync.WaitGroup
	started := map[digest.Digest]bool{}
	for _, desc := range r.manifest.Layers {
		l, ok := want[digest.Digest(desc.Annotations[annotationIndexedLayer])]
		if !ok || started[l.Digest] {
			continue
		}
		started[l.Digest] = true
		wg.Go(func() {
			if err := im.importOne(ctx, repo, r, desc, l); err != nil {
				slog.WarnContext(ctx, "layer index from the registry not used; the layer is indexed here", "layer", l.Digest, "artifact", r.digest, "why", err)
				return
			}
			mu.Lock()
			delete(want, l.Digest)
			mu.Unlock()
		})
	}
	wg.Wait()
	return nil
}

func (im *images) importOne(ctx context.Context, repo name.Repository, r referrer, desc v1.Descriptor, l Layer) error {
	b, err := r.blob(desc, index.MaxPortableSize)
	if err != nil {
		return err
	}
	return im.d.pool.ImportIndex(ctx, repo, l.remote(), b)
}

// notIndexed counts the layers that cannot be indexed.
func notIndexed(layers []IndexedLayer) int {
	n := 0
	for _, l := range layers {
		if l.Note != "" {
			n++
		}
	}
	return n
}
