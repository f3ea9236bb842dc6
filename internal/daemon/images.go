package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/remote"
)

var bucketMounts = []byte("mounts")

// images mounts whole images at user directories: their layers from the
// pool, merged by overlayfs (or one layer's own mount, bound). Every mount
// is recorded in the metadata DB so a restarted daemon can serve it again.
type images struct {
	d *Daemon

	mu     sync.Mutex
	mounts map[string]*Mount // by Dir
	// mounting holds the directories a mount is being made at, so that
	// a second mount at one is refused as when the first has ended.
	mounting map[string]bool
	// waiting holds the writable mounts whose restore waits for a run
	// from before the restart to end (restoreAfterRun); waits counts
	// those goroutines, which a stop waits for.
	waiting map[string]bool
	waits   sync.WaitGroup

	// Images the registry had no recorded list, or no layer indexes, for
	// lately: a build mounts its base's layers once a step, containerd
	// prepares an image's layers one after another; one question is enough.
	noLists, noIndexes missMemo
}

func (im *images) remoteOptions(insecure bool, host string) []remote.Option {
	if insecure {
		return []remote.Option{remote.WithInsecureRegistries(host)}
	}
	return nil
}

// mount resolves req.Ref and mounts it at req.Dir.
func (im *images) mount(ctx context.Context, req MountRequest) (*Mount, error) {
	start := time.Now()
	dir, err := checkMountDir(req.Dir)
	if err != nil {
		return nil, err
	}
	im.mu.Lock()
	_, busy := im.mounts[dir]
	busy = busy || im.mounting[dir]
	if !busy {
		if im.mounting == nil {
			im.mounting = map[string]bool{}
		}
		im.mounting[dir] = true
	}
	im.mu.Unlock()
	if busy {
		return nil, fmt.Errorf("%s: an image is already mounted there: %w", dir, errdefs.ErrAlreadyExists)
	}
	defer func() {
		im.mu.Lock()
		delete(im.mounting, dir)
		im.mu.Unlock()
	}()
	// The registry is asked for the image's layer indexes, and the layers
	// that announce their TOC begin mounting, as soon as its manifest is
	// known, while its config is fetched.
	var early *indexImport
	var warm *layerWarmup
	defer func() { warm.release() }()
	hook := remote.WithManifestHook(func(repo name.Repository, d digest.Digest, layers []remote.Layer) {
		early = im.startIndexImport(ctx, repo, req.Insecure, d, layers)
		warm = im.warmLayers(ctx, repo, req.Insecure, layers)
	})
	img, stored, err := im.resolve(ctx, req.Ref, req.Platform, req.Insecure, hook)
	if err != nil {
		return nil, err
	}
	m, err := im.newMount(dir, req, img)
	if err != nil {
		return nil, err
	}
	// Recorded before the layers mount: their new indexes are saved in the
	// background and would hold the database's single writer lock for as
	// long as a large index takes to write.
	if err := im.record(m); err != nil {
		return nil, err
	}
	lookup := im.lookupPrefetchList(m, req.PrefetchBase, stored)
	if early != nil && early.image == m.Digest {
		<-early.done
	} else {
		im.importMountIndexes(ctx, m, stored)
	}
	if err := im.attach(ctx, m, true, false); err != nil {
		if m.Writable {
			// Nothing was written yet: the new upper directory is empty.
			if rerr := im.d.writable.remove(ctx, m); rerr != nil {
				slog.ErrorContext(ctx, "removing the writable layer of a failed mount", "dir", m.Dir, "error", rerr)
			}
		}
		if derr := im.forget(m.Dir); derr != nil {
			slog.ErrorContext(ctx, "dropping the record of a failed mount", "dir", m.Dir, "error", derr)
		}
		return nil, err
	}
	// Under the lock: an unmount may already see m (attach listed it).
	im.mu.Lock()
	if req.Record {
		m.recording, m.Recording = im.startRecording(m, req), true
	}
	m.stopPrefetch = im.startListedPrefetch(m, lookup)
	im.mu.Unlock()
	m.Duration = time.Since(start)
	if req.IndexPush {
		d, err := im.pushMountIndexes(ctx, m)
		im.mu.Lock() // listed already
		if err != nil {
			m.IndexPushError = err.Error()
		}
		m.IndexArtifact = d
		im.mu.Unlock()
		if err != nil {
			slog.ErrorContext(ctx, "layer indexes not pushed", "ref", m.Ref, "error", err)
		} else if d != "" {
			slog.InfoContext(ctx, "layer indexes pushed as a referrer", "repo", m.Repo, "image", m.Digest, "artifact", d)
		}
	}
	slog.InfoContext(ctx, "image mounted", "ref", m.Ref, "digest", m.Digest, "dir", dir,
		"layers", len(m.Layers), "writable", m.Writable, "duration", m.Duration.Round(time.Millisecond))
	return m, nil
}

// layerWarmup holds the layers a mount began to acquire before it knew
// its image's config (see warmLayers).
type layerWarmup struct {
	pool *fs.Pool
	wg   sync.WaitGroup
	mu   sync.Mutex
	held []digest.Digest
}

// warmLayers begins acquiring, in the background, those of layers whose
// descriptors announce a TOC (eStargz, zstd:chunked: they need no index
// from the registry), so that their TOCs come while the image's config
// does: a round trip sooner. The mount's own acquisition finds them on
// their way; release drops these references once it has taken its own.
func (im *images) warmLayers(ctx context.Context, repo name.Repository, insecure bool, layers []remote.Layer) *layerWarmup {
	w := &layerWarmup{pool: im.d.pool}
	opts := im.remoteOptions(insecure, repo.RegistryStr())
	for _, l := range layers {
		if !fs.AnnouncesTOC(l.Annotations) {
			continue
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			if _, err := im.d.pool.AcquireWhole(ctx, repo, l, opts...); err == nil {
				w.mu.Lock()
				w.held = append(w.held, l.Digest)
				w.mu.Unlock()
			}
		}()
	}
	return w
}

// release waits for the acquisitions warmLayers began and drops their
// references. A nil warmup has none.
func (w *layerWarmup) release() {
	if w == nil {
		return
	}
	w.wg.Wait()
	for _, d := range w.held {
		if err := w.pool.Release(d); err != nil {
			slog.Warn("releasing a layer acquired ahead of its mount", "layer", d, "error", err)
		}
	}
}

// resolve describes the image ref names for platform (default the
// daemon's): from the store when ref is a digest it keeps (stored is then
// set), else from the registry.
func (im *images) resolve(ctx context.Context, refStr, platform string, insecure bool, more ...remote.Option) (img *remote.Image, stored bool, err error) {
	ref, err := remote.ParseReference(refStr, im.d.remoteOpts...)
	if err != nil {
		return nil, false, fmt.Errorf("%q: %w: %v", refStr, errdefs.ErrInvalidArgument, err)
	}
	opts := append(slices.Clone(im.d.remoteOpts), im.remoteOptions(insecure, ref.Context().RegistryStr())...)
	if platform != "" {
		p, err := ParsePlatform(platform)
		if err != nil {
			return nil, false, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
		}
		opts = append(opts, remote.WithPlatform(p))
	}
	if img, err := im.localImage(ref); err == nil {
		return img, true, nil
	}
	// A tag's manifest is asked for; a config the store keeps (an image
	// committed or mounted here) is not fetched again.
	opts = append(opts, remote.WithLocalBlobs(func(d digest.Digest) ([]byte, bool) {
		b, err := im.d.store.Blobs.Get(d)
		return b, err == nil
	}))
	img, err = remote.Resolve(ctx, refStr, append(opts, more...)...)
	return img, false, err
}

// localImage describes ref from the store when ref names a manifest by
// digest and the store keeps it and its config (an image resolved or
// committed here before): a digest names content, so nothing needs asking.
func (im *images) localImage(ref name.Reference) (*remote.Image, error) {
	d, ok := ref.(name.Digest)
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	manifest, err := im.d.store.Blobs.Get(digest.Digest(d.DigestStr()))
	if err != nil {
		return nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil || m.Config.Digest == "" {
		return nil, fmt.Errorf("stored manifest %s is not an image manifest", d.DigestStr())
	}
	config, err := im.d.store.Blobs.Get(m.Config.Digest)
	if err != nil {
		return nil, err
	}
	return remote.ImageFromBytes(d, manifest, config)
}

// newMount describes the mount of img at dir, and keeps the image's
// manifest and config in the store (a build step reads the config, a
// commit both).
func (im *images) newMount(dir string, req MountRequest, img *remote.Image) (*Mount, error) {
	m := &Mount{
		Dir: dir, Ref: req.Ref, Repo: img.Repo.String(), Digest: img.Digest,
		Platform: img.Platform.String(), Insecure: req.Insecure, Created: time.Now().UTC(),
		Config: digest.FromBytes(img.Config), Writable: req.Writable,
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(img.Config, &cfg); err != nil {
		return nil, fmt.Errorf("image config: %w: %v", errdefs.ErrInvalidArgument, err)
	}
	if n := len(cfg.RootFS.DiffIDs); n != len(img.Layers) {
		return nil, fmt.Errorf("image config lists %d diff IDs for %d layers: %w", n, len(img.Layers), errdefs.ErrInvalidArgument)
	}
	for i, l := range img.Layers {
		if err := cfg.RootFS.DiffIDs[i].Validate(); err != nil {
			return nil, fmt.Errorf("image config: diff ID %d: %w: %v", i+1, errdefs.ErrInvalidArgument, err)
		}
		ml := layerOf(l)
		ml.DiffID = cfg.RootFS.DiffIDs[i]
		m.Layers = append(m.Layers, ml)
	}
	if err := im.d.store.Blobs.Put(img.Digest, img.Manifest); err != nil {
		return nil, fmt.Errorf("storing the manifest: %w", err)
	}
	if err := im.d.store.Blobs.Put(m.Config, img.Config); err != nil {
		return nil, fmt.Errorf("storing the image config: %w", err)
	}
	if m.Writable {
		m.Snapshot = newSnapshotKey()
	}
	return m, nil
}

func checkMountDir(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("mount directory %q must be absolute: %w", dir, errdefs.ErrInvalidArgument)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("mount directory: %w", err)
	}
	// The kernel mounts where a symlink leads: the mount is recorded
	// there too, so that a command naming the link later, when it leads
	// elsewhere, never takes another mount for this one.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return "", fmt.Errorf("mount directory: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("mount directory %s is not a directory: %w", dir, errdefs.ErrInvalidArgument)
	}
	return dir, nil
}

// attach mounts m's layers (in parallel) and the overlay at m.Dir, and
// registers the mount in memory. A writable mount's snapshot is created
// when create is set. With adopt, the overlay already at m.Dir, whose
// layers' connections this daemon took over, is kept as it is.
func (im *images) attach(ctx context.Context, m *Mount, create, adopt bool) error {
	repo, err := name.NewRepository(m.Repo, im.nameOptions(m)...)
	if err != nil {
		return fmt.Errorf("repository %q: %w", m.Repo, err)
	}
	opts := im.remoteOptions(m.Insecure, repo.RegistryStr())
	dirs := make([]string, len(m.Layers))
	acquired := make([]bool, len(m.Layers))
	g, gctx := errgroup.WithContext(ctx)
	for i, l := range m.Layers {
		g.Go(func() error {
			desc := l.remote()
			dir, err := im.d.pool.AcquireWhole(gctx, repo, desc, opts...)
			if err != nil {
				return fmt.Errorf("layer %d of %d: %w", i+1, len(m.Layers), err)
			}
			dirs[i], acquired[i] = dir, true
			return nil
		})
	}
	err = g.Wait()
	if err == nil && m.Writable {
		// The layer snapshots hold the layers from here on; the
		// references taken above only made sure errors come out as
		// clearly as for a read-only mount.
		err = im.d.writable.attach(ctx, m, create, adopt)
		for i := range acquired {
			im.d.pool.Release(m.Layers[i].Digest)
			acquired[i] = false
		}
	} else if err == nil {
		lowers := slices.Clone(dirs)
		slices.Reverse(lowers) // overlayfs wants the top layer first
		// One blob twice in an image is one FUSE mount, which overlayfs
		// refuses to stack twice; the higher copy alone gives the same
		// tree (see snapshotter's distinctLayers).
		seen := map[string]bool{}
		lowers = slices.DeleteFunc(lowers, func(d string) bool {
			dup := seen[d]
			seen[d] = true
			return dup
		})
		// Directories a layer holds without an entry take what an
		// unpack gives them from a fixup on top (a lower layer's entry;
		// a setgid parent's group, a one-layer image's too).
		var fixup string
		if !adopt && len(lowers) > 0 {
			if fixup, err = im.d.pool.FixupDir(lowers, im.d.fixupRoot()); err != nil {
				err = fmt.Errorf("directories without an entry: %w", err)
			}
		}
		switch {
		case err != nil:
		case adopt:
		case len(lowers) == 0:
			// An image of no layers (FROM scratch and metadata only)
			// is an empty tree, as an unpack makes it.
			err = kmount.Bind(im.d.emptyDir, m.Dir, unix.MS_RDONLY)
		case len(lowers) == 1 && fixup == "" && im.plain(m.Layers[0].Digest):
			// One layer with nothing for overlayfs to hide is shown
			// by a bind of its own mount, as containerd's overlay
			// snapshotter does for a one-layer view: overlayfs would
			// add its own lookups (a round trip for the xattrs it
			// probes on every file) and page cache in front of FUSE's
			// (hot tar of 50,000 small files: 1.03 s through it,
			// 0.83 s without, 0.77 s on ext4). The flags are the
			// overlay's: read-only, setuid and devices as the image
			// has them.
			err = kmount.Bind(lowers[0], m.Dir, unix.MS_RDONLY)
		default:
			if fixup != "" {
				lowers = append([]string{fixup}, lowers...)
			}
			if len(lowers) == 1 {
				// A read-only overlay needs two lowers; an empty one
				// keeps whiteout handling identical to multi-layer
				// images.
				lowers = append(lowers, im.d.emptyDir)
			}
			// xino: the overlay's inode numbers carry which layer an
			// inode is from, so one device, directory inode numbers
			// that stay put when the dentry cache drops them and
			// readdir's d_ino equal to stat's st_ino, as on the
			// filesystem an unpack writes (each layer is a filesystem
			// of its own: without it, du -x and tar saw three devices
			// in one directory). A kernel that has no xino mounts
			// without it.
			if err = kmount.Overlay(m.Dir, lowers, "", "", "xino=on"); errors.Is(err, unix.EINVAL) {
				err = kmount.Overlay(m.Dir, lowers, "", "")
			}
		}
	}
	if err != nil {
		for i, ok := range acquired {
			if ok {
				im.d.pool.Release(m.Layers[i].Digest)
			}
		}
		return err
	}
	im.mu.Lock()
	im.mounts[m.Dir] = m
	im.mu.Unlock()
	return nil
}

// plain says whether layer d, mounted, has nothing for overlayfs to hide
// (index.Info.Plain).
func (im *images) plain(d digest.Digest) bool {
	s, ok := im.d.pool.Stat(d)
	return ok && s.Plain
}

func (im *images) nameOptions(m *Mount) []name.Option {
	if m.Insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

// detach unmounts the overlay and releases the layers. A writable mount's
// layers are held by its snapshots, and stay.
func (im *images) detach(m *Mount) error {
	im.mu.Lock()
	stop, rec := m.stopPrefetch, m.recording
	im.mu.Unlock()
	if stop != nil {
		stop()
	}
	if rec != nil {
		// Before the unmount: the layers may go with it. A list that
		// cannot be kept or pushed is logged; the unmount goes on.
		_ = im.finishRecording(context.Background(), m, rec)
	}
	errs := []error{kmount.Unmount(m.Dir)}
	if !m.Writable {
		errs = append(errs, inParallel(len(m.Layers), func(i int) error { return im.d.pool.Release(m.Layers[i].Digest) }))
	}
	im.mu.Lock()
	delete(im.mounts, m.Dir)
	im.mu.Unlock()
	return errors.Join(errs...)
}

// closeParallel bounds the layers (or mounts) released at once: each is
// mostly waiting for its server to end.
const closeParallel = 64

// inParallel calls f(0) … f(n-1), closeParallel at a time, and joins their
// errors. Releasing a layer a process still reads waits a grace period
// before its connection is aborted (fs.LayerMount.Unmount): once for all
// of them, not once each.
func inParallel(n int, f func(i int) error) error { return fs.EachParallel(n, closeParallel, f) }

// unmount undoes mount and forgets it. A writable mount with changes is
// refused unless discard is set; its upper directory is deleted only here.
func (im *images) unmount(ctx context.Context, dir string, discard bool) error {
	m, err := im.get(dir)
	if err != nil {
		return err
	}
	// The kernel's unmount of dir would take mounts made under it with it
	// (a lazy detach is recursive), leaving this daemon's record of them,
	// and a writable one's changes, behind a mount that is gone.
	if inner := im.mountsUnder(m.Dir); len(inner) > 0 {
		return fmt.Errorf("%s has images mounted under it (%s): unmount them first: %w",
			m.Dir, strings.Join(inner, ", "), errdefs.ErrFailedPrecondition)
	}
	if m.Writable {
		// Not from under a command running in it, --discard or not; a
		// run whose CLI was killed is ended first.
		im.d.sweepRuns(ctx)
		unlock, err := im.lockRuns(m, "unmount")
		if err != nil {
			return err
		}
		defer unlock()
	}
	if m.Writable && !discard {
		if err := im.checkCommitted(ctx, m); err != nil {
			return err
		}
	}
	if err := im.detach(m); err != nil {
		return err
	}
	if m.Writable {
		if err := im.d.writable.remove(ctx, m); err != nil {
			return err
		}
		// Its run lock goes with it (held here: a run waiting on it
		// finds the mount gone once it has it).
		if err := os.Remove(im.runLock(m)); err != nil && !errors.Is(err, os.ErrNotExist) {
			slog.WarnContext(ctx, "removing a writable mount's run lock", "dir", dir, "error", err)
		}
	}
	slog.InfoContext(ctx, "image unmounted", "ref", m.Ref, "dir", dir, "discarded", m.Writable && discard)
	return im.forget(m.Dir)
}

// mountsUnder lists, sorted, the mounts in directories under dir.
func (im *images) mountsUnder(dir string) []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	var inner []string
	for d := range im.mounts {
		if strings.HasPrefix(d, dir+"/") || (dir == "/" && d != "/") {
			inner = append(inner, d)
		}
	}
	slices.Sort(inner)
	return inner
}

// get returns the mount at dir.
func (im *images) get(dir string) (*Mount, error) {
	dir = filepath.Clean(dir)
	im.mu.Lock()
	m, ok := im.mounts[dir]
	im.mu.Unlock()
	if !ok {
		// A mount is recorded where symlinks lead (checkMountDir): dir
		// may name it through one (a state root under a symlink, say).
		if real, err := filepath.EvalSymlinks(dir); err == nil && real != dir {
			im.mu.Lock()
			m, ok = im.mounts[real]
			im.mu.Unlock()
		}
	}
	if !ok {
		im.mu.Lock()
		waiting := im.waiting[dir]
		im.mu.Unlock()
		if waiting {
			return nil, fmt.Errorf("%s: its writable mount is mounted again once a 'strata run' in it from before the daemon's restart has ended: %w", dir, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("%s: no image mounted there by strata: %w", dir, errdefs.ErrNotFound)
	}
	return m, nil
}

// getWritable returns the writable mount at dir.
func (im *images) getWritable(dir string) (*Mount, error) {
	m, err := im.get(dir)
	if err != nil {
		return nil, err
	}
	if !m.Writable {
		return nil, fmt.Errorf("%s: the image there is mounted read-only (mount it with --rw): %w", m.Dir, errdefs.ErrFailedPrecondition)
	}
	return m, nil
}

// forget removes the record of the mount at dir.
func (im *images) forget(dir string) error {
	return im.d.store.DB().Update(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMounts); b != nil {
			return b.Delete([]byte(dir))
		}
		return nil
	})
}

func (im *images) record(m *Mount) error {
	v, err := json.Marshal(recordOf(m))
	if err != nil {
		return err
	}
	return im.d.store.DB().Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketMounts)
		if err != nil {
			return err
		}
		return b.Put([]byte(m.Dir), v)
	})
}

// list returns the mounts with per-layer transfer counts.
func (im *images) list() []Mount {
	im.mu.Lock()
	defer im.mu.Unlock()
	out := make([]Mount, 0, len(im.mounts))
	for _, m := range im.mounts {
		c := *m
		c.Layers = slices.Clone(m.Layers)
		for i := range c.Layers {
			if s, ok := im.d.pool.Stat(c.Layers[i].Digest); ok {
				c.Layers[i].FetchedBytes, c.Layers[i].Requests = s.FetchedBytes, s.Requests
				c.Layers[i].Format, c.Layers[i].Local, c.Layers[i].Packed = string(s.Format), s.Local, string(s.Packed)
			}
		}
		c.Runs = slices.Clone(m.Runs)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Mount) int { return strings.Compare(a.Dir, b.Dir) })
	return out
}

// restore mounts again every recorded image. An overlay whose layers'
// connections were taken over from the previous daemon lives on, with
// whatever runs in it, and is kept; otherwise (a daemon that stopped,
// or died with no descriptor store) the old overlay is dead (its FUSE
// lowers are gone) and is detached first. A record that cannot be
// restored is logged and kept, so a later start (registry back, say) can
// try again.
func (im *images) restore(ctx context.Context) {
	var recs []*Mount
	im.d.store.DB().View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMounts)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r mountRecord
			if err := json.Unmarshal(v, &r); err != nil {
				slog.Error("mount record unreadable; skipped", "dir", string(k), "error", err)
				return nil
			}
			m := r.mount()
			recs = append(recs, m)
			return nil
		})
	})
	for _, m := range recs {
		// What the previous daemon stacked at m.Dir on layers taken
		// over: an overlay, or a bind of the one layer's mount.
		t := kmount.FSType(m.Dir)
		adopt := t == "overlay" || !m.Writable && t == fs.MountType
		for _, l := range m.Layers {
			adopt = adopt && im.d.pool.Resumed(l.Digest)
		}
		if !adopt {
			if err := kmount.Unmount(m.Dir); err != nil {
				slog.Warn("could not clear stale mount", "dir", m.Dir, "error", err)
			}
		}
		if m.Writable && !adopt && im.runHeld(m) {
			// A run from before the stop still works on the overlay the
			// stop detached (its container keeps it): a second overlay
			// on the same upper directory would change it under that
			// one's feet (overlayfs calls it undefined). It is mounted
			// again once the run ends.
			im.mu.Lock()
			if im.mounting == nil {
				im.mounting = map[string]bool{}
			}
			if im.waiting == nil {
				im.waiting = map[string]bool{}
			}
			im.mounting[m.Dir], im.waiting[m.Dir] = true, true
			im.mu.Unlock()
			slog.Warn("writable mount waits for a run from before the restart to end before it is mounted again", "ref", m.Ref, "dir", m.Dir)
			im.waits.Add(1)
			go im.restoreAfterRun(ctx, m)
			continue
		}
		if err := im.attach(ctx, m, false, adopt); err != nil {
			if im.neverMade(ctx, m) {
				continue
			}
			slog.Error("could not restore mount", "ref", m.Ref, "dir", m.Dir, "error", err)
			continue
		}
		if adopt {
			slog.Info("mount taken over from the previous daemon", "ref", m.Ref, "dir", m.Dir)
		} else {
			slog.Info("mount restored", "ref", m.Ref, "dir", m.Dir)
		}
	}
}

// runHeld says whether a run holds writable mount m's run lock.
func (im *images) runHeld(m *Mount) bool {
	unlock, err := im.lockRuns(m, "")
	if err != nil {
		return errdefs.IsFailedPrecondition(err)
	}
	unlock()
	return false
}

// restoreAfterRun mounts writable mount m again once the run holding its
// lock has ended, or gives up when ctx ends (the daemon stops; the record
// stays for the next start).
func (im *images) restoreAfterRun(ctx context.Context, m *Mount) {
	defer im.waits.Done()
	defer func() {
		im.mu.Lock()
		delete(im.mounting, m.Dir)
		delete(im.waiting, m.Dir)
		im.mu.Unlock()
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		unlock, err := im.lockRuns(m, "mount")
		if errdefs.IsFailedPrecondition(err) {
			continue
		}
		if err == nil {
			err = im.attach(ctx, m, false, false)
			unlock()
		}
		if err != nil {
			slog.Error("could not restore mount", "ref", m.Ref, "dir", m.Dir, "error", err)
			return
		}
		slog.Info("mount restored once the run from before the restart ended", "ref", m.Ref, "dir", m.Dir)
		return
	}
}

// neverMade drops writable mount m, which could not be restored, when its
// writable layer was never made: the daemon died while mounting it (the
// record is written first), its command failed, and nothing was written
// in it. Its record would fail every start, and keep the layer snapshots
// prepared for it mounted.
func (im *images) neverMade(ctx context.Context, m *Mount) bool {
	if !m.Writable {
		return false
	}
	if _, err := im.d.writable.sn.Stat(ctx, m.Snapshot); !errdefs.IsNotFound(err) {
		return false
	}
	if err := im.d.writable.remove(ctx, m); err != nil {
		slog.Error("removing the layers of a writable mount never made", "dir", m.Dir, "error", err)
	}
	if err := im.forget(m.Dir); err != nil {
		slog.Error("dropping the record of a writable mount never made", "dir", m.Dir, "error", err)
		return false
	}
	slog.Warn("dropped a writable mount that was never made (its mount was cut short)", "ref", m.Ref, "dir", m.Dir)
	return true
}

// closeAll unmounts every image (the records stay, for restore); the
// restores waiting for runs to end are stopped first (ctx is done).
func (im *images) closeAll() error {
	im.waits.Wait()
	im.mu.Lock()
	all := make([]*Mount, 0, len(im.mounts))
	for _, m := range im.mounts {
		all = append(all, m)
	}
	im.mu.Unlock()
	return inParallel(len(all), func(i int) error { return im.detach(all[i]) })
}
