package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/remote"
)

// Recorded prefetch lists (see fs/record.go): recorded on a mount with
// MountRequest.Record, kept in the store by image digest, optionally
// pushed as an OCI referrer of the image, and fetched by later mounts of
// the image on this machine or any other.

// bucketPrefetchLists maps an image's manifest digest to the digest of its
// recorded list, a blob in the store.
var bucketPrefetchLists = []byte("prefetch-lists")

// Values of Config.PrefetchLists.
const (
	PrefetchListsAuto  = "auto"  // the store's list, else the registry's referrer
	PrefetchListsLocal = "local" // the store's list only
	PrefetchListsOff   = "off"
)

// DefaultRecordFor is how long a recording mount notes opens when the
// request does not say.
const DefaultRecordFor = 60 * time.Second

// recording is a mount's recording in progress.
type recording struct {
	r     *fs.Recorder
	push  bool
	timer *time.Timer
	once  sync.Once
	done  chan struct{} // closed when the list is saved (and pushed)
	err   error
}

// layerDigests are m's layers' digests, bottom to top.
func (m *Mount) layerDigests() []digest.Digest {
	out := make([]digest.Digest, len(m.Layers))
	for i, l := range m.Layers {
		out[i] = l.Digest
	}
	return out
}

// startRecording notes the files opened in m's layers until req.RecordFor
// has passed or m is unmounted, whichever comes first.
func (im *images) startRecording(m *Mount, req MountRequest) *recording {
	rec := &recording{r: im.d.pool.Record(m.layerDigests()), push: req.RecordPush, done: make(chan struct{})}
	d := req.RecordFor
	if d <= 0 {
		d = DefaultRecordFor
	}
	rec.timer = time.AfterFunc(d, func() { im.finishRecording(context.Background(), m, rec) })
	slog.Info("recording the files the workload opens", "dir", m.Dir, "for", d, "push", req.RecordPush)
	return rec
}

// finishRecording stops rec, keeps its list in the store as m's image's
// list and pushes it when asked. It runs once; later calls wait for it.
func (im *images) finishRecording(ctx context.Context, m *Mount, rec *recording) error {
	rec.once.Do(func() {
		defer close(rec.done)
		rec.timer.Stop()
		im.d.pool.StopRecording(rec.r)
		list := rec.r.List(m.Digest, m.layerDigests())
		if len(list.Files) == 0 {
			// The workload did not run, or failed at once: an empty list
			// would replace a good one, here and (pushed, the newest
			// referrer) everywhere.
			slog.Warn("recorded prefetch list empty: the workload opened no file of the image; nothing kept or pushed",
				"dir", m.Dir, "image", m.Digest)
			return
		}
		b, err := list.Marshal()
		if err == nil {
			err = im.keepPrefetchList(m.Digest, b)
		}
		if err != nil {
			rec.err = fmt.Errorf("keeping the recorded prefetch list: %w", err)
			slog.Error("recorded prefetch list not kept", "dir", m.Dir, "error", err)
			return
		}
		slog.Info("recorded prefetch list kept", "image", m.Digest, "files", len(list.Files), "list", digest.FromBytes(b))
		if rec.push {
			// Bounded: an unmount waits for it.
			ctx, cancel := context.WithTimeout(ctx, 4*im.d.cfg.FetchTimeout.Duration)
			defer cancel()
			desc, err := im.pushPrefetchList(ctx, m, b)
			if err != nil {
				rec.err = fmt.Errorf("pushing the recorded prefetch list: %w", err)
				slog.Error("recorded prefetch list not pushed", "image", m.Digest, "error", err)
				return
			}
			slog.Info("recorded prefetch list pushed as a referrer", "repo", m.Repo, "image", m.Digest, "referrer", desc)
		}
	})
	<-rec.done
	return rec.err
}

// keepPrefetchList stores list as the list of image.
func (im *images) keepPrefetchList(image digest.Digest, list []byte) error {
	d := digest.FromBytes(list)
	if err := im.d.store.Blobs.Put(d, list); err != nil {
		return err
	}
	return im.d.store.DB().Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPrefetchLists)
		if err != nil {
			return err
		}
		return b.Put([]byte(image), []byte(d))
	})
}

// storedPrefetchList returns the list the store keeps for image, nil when
// there is none.
func (im *images) storedPrefetchList(image digest.Digest) ([]byte, error) {
	var d digest.Digest
	err := im.d.store.DB().View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketPrefetchLists); b != nil {
			d = digest.Digest(b.Get([]byte(image)))
		}
		return nil
	})
	if err != nil || d == "" {
		return nil, err
	}
	return im.d.store.Blobs.Get(d)
}

// pushPrefetchList pushes list to m's repository as an artifact whose
// subject is m's image (see pushReferrer).
func (im *images) pushPrefetchList(ctx context.Context, m *Mount, list []byte) (digest.Digest, error) {
	repo, err := name.NewRepository(m.Repo, im.nameOptions(m)...)
	if err != nil {
		return "", err
	}
	return im.pushReferrer(ctx, repo, m.Insecure, m.Digest, fs.PrefetchListMediaType,
		[]artifactBlob{{mediaType: fs.PrefetchListMediaType, data: list}}, nil)
}

// remotePrefetchList fetches the newest recorded list pushed to repo as
// a referrer of the image subject, nil when there is none.
func (im *images) remotePrefetchList(ctx context.Context, repo name.Repository, insecure bool, subject digest.Digest) ([]byte, error) {
	refs, err := im.referrers(ctx, repo, insecure, subject, fs.PrefetchListMediaType)
	if err != nil || len(refs) == 0 {
		return nil, err
	}
	best := refs[0]
	if err := best.load(); err != nil {
		return nil, err
	}
	if ls := best.manifest.Layers; len(ls) != 1 || string(ls[0].MediaType) != fs.PrefetchListMediaType {
		return nil, fmt.Errorf("referrer %s is not a prefetch list of %s: %w", best.digest, subject, fs.ErrBadPrefetchList)
	}
	b, err := best.blob(best.manifest.Layers[0], fs.MaxPrefetchListBytes)
	if err != nil {
		return nil, fmt.Errorf("prefetch list: %w: %w", fs.ErrBadPrefetchList, err)
	}
	return b, nil
}

// startListedPrefetch fetches, in the background, the files of the
// recorded list lookup delivers, until the returned function is called
// (by the unmount).
func (im *images) startListedPrefetch(m *Mount, lookup <-chan listLookup) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer cancel()
		var res listLookup
		select {
		case res = <-lookup:
		case <-ctx.Done():
			return
		}
		switch {
		case errors.Is(res.err, fs.ErrBadPrefetchList):
			slog.Warn("recorded prefetch list refused", "image", m.Digest, "from", res.from, "error", res.err)
			return
		case res.err != nil:
			slog.Warn("no recorded prefetch list used", "image", m.Digest, "from", res.from, "error", res.err)
			return
		}
		if res.list == nil {
			return
		}
		start := time.Now()
		st := im.d.pool.PrefetchListed(ctx, res.list)
		slog.Info("recorded prefetch done", "image", m.Digest, "from", res.from, "files", st.Files, "missing", st.Missing,
			"streams", st.Streams, "bytes", st.Bytes, "found_in", res.took.Round(time.Millisecond),
			"duration", time.Since(start).Round(time.Millisecond), "stopped", ctx.Err() != nil)
	}()
	return cancel
}

// listLookup is the outcome of looking for a recorded list.
type listLookup struct {
	list *fs.PrefetchList
	from string // "store" or "registry"
	err  error
	took time.Duration // to find it
}

// lookupPrefetchList starts looking for a recorded list for m, per the
// daemon's policy: its image's own, else (for a build step's mount) the
// list of the image base names, whose layers are m's first ones. An image
// the store described (stored) is mounted without a word to the registry:
// its own list is looked for in the store only. The registry is asked
// about a base once a daemon's life (see noList). It returns where the
// answer will arrive, and runs while the layers mount, so the registry's
// round trips cost the mount nothing. A list is checked before use: well
// formed, and recorded on the image it is the list of.
func (im *images) lookupPrefetchList(m *Mount, base string, stored bool) <-chan listLookup {
	out := make(chan listLookup, 1)
	policy := im.d.cfg.PrefetchLists
	if policy == PrefetchListsOff {
		out <- listLookup{}
		return out
	}
	go func() {
		start := time.Now()
		res := im.lookupList(m, base, stored, policy)
		res.took = time.Since(start)
		out <- res
	}()
	return out
}

func (im *images) lookupList(m *Mount, base string, stored bool, policy string) listLookup {
	repo, err := name.NewRepository(m.Repo, im.nameOptions(m)...)
	if err != nil {
		return listLookup{err: err}
	}
	own := policy
	if stored {
		own = PrefetchListsLocal
	}
	res := im.findPrefetchList(repo, m.Insecure, m.Digest, m.Layers, false, own)
	if res.list == nil && res.err == nil && base != "" {
		ref, err := remote.ParseReference(base, im.d.remoteOpts...)
		d, ok := ref.(name.Digest)
		if err != nil || !ok {
			return listLookup{err: fmt.Errorf("base image %q: not a digest reference", base)}
		}
		res = im.findPrefetchList(d.Context(), m.Insecure, digest.Digest(d.DigestStr()), m.Layers, true, policy)
	}
	return res
}

// findPrefetchList looks for the list of image (in repo) in the store,
// then, unless policy says local, in the registry; a list found there
// that passes the checks is kept. prefix accepts a list whose layers are
// the first of layers rather than all of them.
func (im *images) findPrefetchList(repo name.Repository, insecure bool, image digest.Digest, layers []Layer, prefix bool, policy string) listLookup {
	from := "store"
	b, err := im.storedPrefetchList(image)
	if err == nil && b == nil && policy != PrefetchListsLocal && !im.noLists.recent(repo, image) && !isScratchRepo(repo) {
		from = "registry"
		ctx, cancel := context.WithTimeout(context.Background(), im.d.cfg.FetchTimeout.Duration)
		b, err = im.remotePrefetchList(ctx, repo, insecure, image)
		cancel()
		if err == nil && b == nil {
			im.noLists.note(repo, image)
		}
	}
	if err != nil || b == nil {
		return listLookup{from: from, err: err}
	}
	list, err := checkPrefetchList(b, image, layers, prefix)
	if err == nil && from == "registry" {
		if kerr := im.keepPrefetchList(image, b); kerr != nil {
			slog.Warn("recorded prefetch list not kept", "image", image, "error", kerr)
		}
	}
	if prefix {
		from += " (base image " + image.String() + ")"
	}
	return listLookup{list: list, from: from, err: err}
}

// checkPrefetchList parses b and checks that it was recorded on image,
// whose layers are layers (with prefix, the first of layers).
func checkPrefetchList(b []byte, image digest.Digest, layers []Layer, prefix bool) (*fs.PrefetchList, error) {
	list, err := fs.ParsePrefetchList(b)
	if err != nil {
		return nil, err
	}
	if list.Image != image {
		return nil, fmt.Errorf("%w: recorded on image %s, not on %s", fs.ErrBadPrefetchList, list.Image, image)
	}
	if prefix && len(list.Layers) <= len(layers) {
		layers = layers[:len(list.Layers)]
	}
	if !slices.EqualFunc(list.Layers, layers, func(d digest.Digest, l Layer) bool { return d == l.Digest }) {
		return nil, fmt.Errorf("%w: its layers are not the image's", fs.ErrBadPrefetchList)
	}
	return list, nil
}
