package build

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

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

func (c *cache) put(key, image string) {
	e := cacheEntry{Image: image, Used: time.Now().UTC()}
	c.entries[key] = e
	c.added[key] = e
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
// directories of RUN --mount=type=cache, and says how many entries went.
func PruneCache(root string) (int, error) {
	dir := filepath.Join(root, "build")
	unlock, err := lockFile(filepath.Join(dir, cacheFile+".lock"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	defer unlock()
	entries, err := readCache(filepath.Join(dir, cacheFile))
	if err != nil {
		return 0, err
	}
	if err := os.Remove(filepath.Join(dir, cacheFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	if err := os.RemoveAll(filepath.Join(dir, "cache-mounts")); err != nil {
		return 0, err
	}
	return len(entries), nil
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
