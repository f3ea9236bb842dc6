package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"
)

// The build cache: which image a step made, by the step's key (its parent
// image, the config and history it commits, the instruction and, for COPY
// and ADD, the digest of what it copies). The images themselves are in the
// daemon's store; a hit whose image the store no longer holds is a miss.
// It is one JSON file in the state root's build directory, bounded to
// maxCacheEntries entries (the least recently used go first); builds
// running at once merge their entries under a lock.

const (
	cacheFile       = "cache.json"
	maxCacheEntries = 4096
)

type cacheEntry struct {
	Image string    `json:"image"` // REPO@DIGEST in the store
	Used  time.Time `json:"used"`
}

type cache struct {
	dir     string
	entries map[string]cacheEntry
	added   map[string]cacheEntry
}

func openCache(dir string) (*cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &cache{dir: dir, added: map[string]cacheEntry{}}
	var err error
	c.entries, err = readCache(filepath.Join(dir, cacheFile))
	return c, err
}

func readCache(file string) (map[string]cacheEntry, error) {
	entries := map[string]cacheEntry{}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return entries, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &entries); err != nil {
		// A damaged cache costs a rebuild, never a failed build.
		return map[string]cacheEntry{}, nil
	}
	return entries, nil
}

func (c *cache) get(key string) (string, bool) {
	e, ok := c.entries[key]
	if !ok {
		return "", false
	}
	e.Used = time.Now().UTC()
	c.added[key] = e
	return e.Image, true
}

// put notes the image a step made, in the file at once: a build killed
// later (SIGKILL) keeps the steps it finished, as one that fails does. An
// error writing it is left for the build's last save to report.
func (c *cache) put(key, image string) {
	e := cacheEntry{Image: image, Used: time.Now().UTC()}
	c.entries[key] = e
	c.added[key] = e
	_ = c.save()
}

// save merges this build's entries into the file, under a lock, and drops
// the least recently used beyond the bound.
func (c *cache) save() error {
	if len(c.added) == 0 {
		return nil
	}
	unlock, err := lockFile(filepath.Join(c.dir, cacheFile+".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	file := filepath.Join(c.dir, cacheFile)
	entries, err := readCache(file)
	if err != nil {
		return err
	}
	for k, e := range c.added {
		entries[k] = e
	}
	trim(entries, maxCacheEntries)
	b, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// trim drops the least recently used entries beyond max.
func trim(entries map[string]cacheEntry, max int) {
	if len(entries) <= max {
		return
	}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return entries[a].Used.Compare(entries[b].Used) })
	for _, k := range keys[:len(entries)-max] {
		delete(entries, k)
	}
}

// PruneCache empties the build cache of the state root root and the
// directories of RUN --mount=type=cache, and says how many cache entries
// went and how many cache directories a running build holds (see
// holdCacheMount): those are kept, as BuildKit's prune keeps what is in use.
func PruneCache(root string) (entries, busy int, err error) {
	dir := filepath.Join(root, "build")
	unlock, err := lockFile(filepath.Join(dir, cacheFile+".lock"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, 0, nil
		}
		return 0, 0, err
	}
	defer unlock()
	cached, err := readCache(filepath.Join(dir, cacheFile))
	if err != nil {
		return 0, 0, err
	}
	if err := os.Remove(filepath.Join(dir, cacheFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, 0, err
	}
	mounts := filepath.Join(dir, cacheMountsDir)
	des, err := os.ReadDir(mounts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, 0, err
	}
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		p := filepath.Join(mounts, de.Name())
		release, ok, err := flockFile(p+".lock", unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			return 0, 0, err
		}
		if !ok {
			busy++
			continue
		}
		// The lock file stays: a build waiting on it must lock the file
		// the next prune looks at, not one unlinked under it.
		err = os.RemoveAll(p)
		release()
		if err != nil {
			return 0, 0, err
		}
	}
	return len(cached), busy, nil
}

// cacheMountsDir holds, under the state root's build directory, the
// directories of RUN --mount=type=cache, each with a lock file beside it.
const cacheMountsDir = "cache-mounts"

// holdCacheMount takes a shared lock on the lock file of the cache
// directory dir, held until release: PruneCache leaves a held directory.
func holdCacheMount(dir string) (release func(), err error) {
	release, _, err = flockFile(dir+".lock", unix.LOCK_SH)
	return release, err
}

// maxPrivateCaches bounds the instances of one cache that
// sharing=private makes for steps running at once.
const maxPrivateCaches = 64

// cacheDir returns the directory of cache dir a step binds, and what
// releases it once the step has run. As BuildKit shares a cache mount:
// "shared" (the default) steps use it at once; a "locked" step has it to
// itself, waiting for the steps of other builds that have it (its step
// lock, dir+".step"); a "private" step takes the first instance (dir,
// dir-1, dir-2, ...) no other step has. An instance that is not there yet
// is made by prepare in the build's work directory and renamed into
// place. Each instance is held (holdCacheMount) until the build ends.
func (b *builder) cacheDir(ctx context.Context, dir string, sharing instructions.ShareMode, prepare func(tmp string) error) (string, func(), error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return "", nil, err
	}
	for n := 0; n < maxPrivateCaches; n++ {
		inst := dir
		if n > 0 {
			inst = fmt.Sprintf("%s-%d", dir, n)
		}
		var release func()
		var err error
		switch sharing {
		case instructions.MountSharingPrivate:
			var ok bool
			if release, ok, err = flockFile(inst+".step", unix.LOCK_EX|unix.LOCK_NB); err == nil && !ok {
				continue // another step has it: the next instance
			}
		case instructions.MountSharingLocked:
			release, err = waitLock(ctx, inst+".step")
		default:
			release, _, err = flockFile(inst+".step", unix.LOCK_SH)
		}
		if err != nil {
			return "", nil, err
		}
		hold, err := holdCacheMount(inst)
		if err == nil {
			b.held = append(b.held, hold) // until the build ends: a prune keeps it
			err = b.makeCacheDir(inst, prepare)
		}
		if err != nil {
			release()
			return "", nil, err
		}
		return inst, release, nil
	}
	return "", nil, fmt.Errorf("RUN --mount=type=cache,sharing=private: %d steps have the cache already", maxPrivateCaches)
}

// makeCacheDir makes cache directory dir with prepare, in the build's
// work directory, renamed into place, unless it is there.
func (b *builder) makeCacheDir(dir string, prepare func(tmp string) error) error {
	if _, err := os.Lstat(dir); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	tmp, err := os.MkdirTemp(b.work, "cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // gone once renamed
	if err := prepare(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Lstat(dir); serr == nil {
			return nil // another build made it meanwhile
		}
		return err
	}
	return nil
}

// waitLock takes an exclusive lock on path, waiting for whoever holds it
// until ctx ends.
func waitLock(ctx context.Context, path string) (func(), error) {
	for {
		release, ok, err := flockFile(path, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil || ok {
			return release, err
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func lockFile(path string) (func(), error) {
	release, _, err := flockFile(path, unix.LOCK_EX)
	return release, err
}

// flockFile opens (making it if need be) and flocks path as how says;
// with LOCK_NB in how, ok is false when another holds a lock that
// conflicts. release closes it.
func flockFile(path string, how int) (release func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if how&unix.LOCK_NB != 0 && errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, true, nil
}
