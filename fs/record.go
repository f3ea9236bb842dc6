package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
)

// Recorded prefetch. A workload's first run on an image, mounted with
// recording on, notes which files it opens, in order, layer by layer; the
// list is kept next to the image (and may be pushed as a referrer of it).
// A later cold mount of the same image fetches those files right away, in
// the order they were first wanted, as a few large requests in flight at
// once, instead of discovering them one miss (one round trip) at a time.
// It is the prefetch landmark of `strata convert --prioritize` learned
// from a run instead of built into the image, so it works on any image,
// for any workload, without rebuilding the image.

// PrefetchListMediaType is the media type of a recorded list, and the
// artifact type of the referrer that carries it.
const PrefetchListMediaType = "application/vnd.stratafs.prefetch-list.v1+json"

// Limits on a list, which is untrusted when it comes from a registry.
const (
	MaxPrefetchListBytes = 16 << 20
	maxListFiles         = 200_000
	maxListLayers        = 1024
	maxListPath          = 4096
	maxListChunks        = 1 << 20 // over all files
)

// PrefetchList is what a workload opened in an image, in the order it
// first opened each file.
type PrefetchList struct {
	MediaType string `json:"mediaType"`
	// Image is the manifest digest the list was recorded on; Layers, that
	// image's layer digests, bottom to top (files name them by index).
	Image  digest.Digest   `json:"image"`
	Layers []digest.Digest `json:"layers"`
	Files  []ListedFile    `json:"files"`
}

// ListedFile is one file of a list: a regular file of layer Layer (an
// index into PrefetchList.Layers), by its path from the layer's root, and
// the file offsets of the chunks the workload read (a program maps a
// shared library whole and touches a few pages of it). No chunks: the
// whole file.
type ListedFile struct {
	Layer  int     `json:"layer"`
	Path   string  `json:"path"`
	Chunks []int64 `json:"chunks,omitempty"`
}

// ErrBadPrefetchList is wrapped by every error about a list's content.
var ErrBadPrefetchList = errors.New("invalid prefetch list")

// ParsePrefetchList reads and checks a list: its size, media type, digests,
// layer indexes and paths (relative, clean, no "..", no NUL). It does not
// check that the files exist: PrefetchListed skips those that do not.
func ParsePrefetchList(b []byte) (*PrefetchList, error) {
	if len(b) > MaxPrefetchListBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrBadPrefetchList, len(b), MaxPrefetchListBytes)
	}
	var l PrefetchList
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPrefetchList, err)
	}
	if l.MediaType != PrefetchListMediaType {
		return nil, fmt.Errorf("%w: media type %q", ErrBadPrefetchList, l.MediaType)
	}
	if err := l.Image.Validate(); err != nil {
		return nil, fmt.Errorf("%w: image: %v", ErrBadPrefetchList, err)
	}
	if len(l.Layers) == 0 || len(l.Layers) > maxListLayers {
		return nil, fmt.Errorf("%w: %d layers", ErrBadPrefetchList, len(l.Layers))
	}
	for i, d := range l.Layers {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("%w: layer %d: %v", ErrBadPrefetchList, i, err)
		}
	}
	if len(l.Files) > maxListFiles {
		return nil, fmt.Errorf("%w: %d files, more than %d", ErrBadPrefetchList, len(l.Files), maxListFiles)
	}
	chunks := 0
	for i, f := range l.Files {
		if f.Layer < 0 || f.Layer >= len(l.Layers) {
			return nil, fmt.Errorf("%w: file %d: layer %d of %d", ErrBadPrefetchList, i, f.Layer, len(l.Layers))
		}
		if err := checkListedPath(f.Path); err != nil {
			return nil, fmt.Errorf("%w: file %d: %v", ErrBadPrefetchList, i, err)
		}
		if chunks += len(f.Chunks); chunks > maxListChunks {
			return nil, fmt.Errorf("%w: more than %d chunks", ErrBadPrefetchList, maxListChunks)
		}
		for _, off := range f.Chunks {
			if off < 0 {
				return nil, fmt.Errorf("%w: file %d: chunk offset %d", ErrBadPrefetchList, i, off)
			}
		}
	}
	return &l, nil
}

// CleanListedPath turns a path in an image ("/usr/bin/x", "./a//b") into
// the form a list names files by, relative to the root and clean, and
// checks it as ParsePrefetchList does.
func CleanListedPath(p string) (string, error) {
	c := path.Clean("/" + p)[1:]
	return c, checkListedPath(c)
}

// checkListedPath accepts a clean relative path inside the layer.
func checkListedPath(p string) error {
	switch {
	case p == "" || len(p) > maxListPath:
		return fmt.Errorf("path of %d bytes", len(p))
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("path %q holds a NUL byte", p)
	case path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %q is not clean and relative to the layer's root", p)
	}
	return nil
}

// Marshal encodes the list.
func (l *PrefetchList) Marshal() ([]byte, error) { return json.Marshal(l) }

// Recorder collects the files opened in a set of layers, in order, each
// once. Layers are shared between images, so it notes opens through any
// mount of those layers while it records.
type Recorder struct {
	layers []digest.Digest

	mu     sync.Mutex
	seen   map[recordKey]int // index in files
	files  []recorded
	chunks int
	full   bool
}

type recordKey struct {
	layer digest.Digest
	ino   uint64
}

type recorded struct {
	layer  digest.Digest
	ino    uint64
	paths  View    // where the path of ino is found, once the list is made
	chunks []int64 // file offsets of the chunks read, in the order first read
	read   map[int64]bool
	whole  bool // read where the daemon cannot see (passthrough): all of it
}

// opened notes the first open of inode ino of layer, whose index is idx.
// Its path is found when the list is made: the layer's file system keeps
// no paths.
func (r *Recorder) opened(layer digest.Digest, ino uint64, idx View) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.add(layer, ino, idx)
}

// add lists inode ino of layer, if it is not listed yet and the list has
// room, and returns its place; the caller holds mu.
func (r *Recorder) add(layer digest.Digest, ino uint64, idx View) (int, bool) {
	k := recordKey{layer, ino}
	if i, ok := r.seen[k]; ok {
		return i, true
	}
	if r.full {
		return 0, false
	}
	if len(r.files) >= maxListFiles {
		r.full = true
		slog.Warn("fs: prefetch recording stopped at its file limit", "files", maxListFiles)
		return 0, false
	}
	r.seen[k] = len(r.files)
	r.files = append(r.files, recorded{layer: layer, ino: ino, paths: idx})
	return len(r.files) - 1, true
}

// wholeFile notes that inode ino of layer is read without the daemon
// seeing which chunks (a passthrough open). A file whose reads the
// recording saw before (its whole file was made after them) keeps those
// chunks: a later open reads much the same (a library mapped again, the
// locale archive at each setlocale); one read only so is listed whole.
func (r *Recorder) wholeFile(layer digest.Digest, ino uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i, ok := r.seen[recordKey{layer, ino}]; ok && len(r.files[i].chunks) == 0 {
		r.files[i].whole = true
	}
}

// readChunk notes that the chunk at file offset off of inode ino of layer
// was read (from the cache or fetched). A file read without an open the
// daemon saw (a layer whose files the kernel opens alone) is listed at
// its first read.
func (r *Recorder) readChunk(layer digest.Digest, ino uint64, off int64, idx View) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.chunks >= maxListChunks {
		return
	}
	i, ok := r.add(layer, ino, idx)
	if !ok {
		return
	}
	f := &r.files[i]
	if f.read[off] {
		return
	}
	if f.read == nil {
		f.read = map[int64]bool{}
	}
	f.read[off] = true
	f.chunks = append(f.chunks, off)
	r.chunks++
}

// List returns what was recorded as the list of image, whose layers
// (bottom to top) are layers. Files of other layers are left out.
func (r *Recorder) List(image digest.Digest, layers []digest.Digest) *PrefetchList {
	l := &PrefetchList{MediaType: PrefetchListMediaType, Image: image, Layers: layers, Files: []ListedFile{}}
	at := map[digest.Digest]int{}
	for i, d := range layers {
		at[d] = i // one blob twice: the top copy, as the overlay shows it
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	wanted := map[View]map[uint64]string{}
	for _, f := range r.files {
		if _, ok := at[f.layer]; ok && (f.whole || len(f.chunks) > 0) {
			if wanted[f.paths] == nil {
				wanted[f.paths] = map[uint64]string{}
			}
			wanted[f.paths][f.ino] = ""
		}
	}
	for idx, inos := range wanted {
		findPaths(idx, inos)
	}
	for _, f := range r.files {
		// A file opened but never read needs nothing fetched.
		i, ok := at[f.layer]
		var p string
		if ok {
			p = wanted[f.paths][f.ino]
		}
		switch {
		case !ok || checkListedPath(p) != nil:
		case f.whole:
			l.Files = append(l.Files, ListedFile{Layer: i, Path: p})
		case len(f.chunks) > 0:
			l.Files = append(l.Files, ListedFile{Layer: i, Path: p, Chunks: slices.Clone(f.chunks)})
		}
	}
	return l
}

// findPaths sets the path of every inode of inos, from the layer's root,
// walking idx's directories breadth first until all are found. An inode
// with several names (hard links) gets the first found.
func findPaths(idx View, inos map[uint64]string) {
	left := len(inos)
	type dir struct {
		ino  uint64
		path string
	}
	queue := []dir{{index.RootIno, ""}}
	for len(queue) > 0 && left > 0 {
		d := queue[0]
		queue = queue[1:]
		kids, err := idx.ReadDir(d.ino)
		if err != nil {
			slog.Warn("fs: a directory of a recorded layer is unreadable", "inode", d.ino, "error", err)
			continue
		}
		for _, k := range kids {
			p := path.Join(d.path, k.Name)
			if cur, ok := inos[k.Ino]; ok && cur == "" {
				inos[k.Ino] = p
				left--
			}
			if k.Type == index.TypeDir {
				queue = append(queue, dir{k.Ino, p})
			}
		}
	}
}

// recorders is the set of recorders a layer reports opens to.
type recorders struct {
	mu  sync.Mutex
	set atomic.Pointer[[]*Recorder] // read without the lock on every open
}

// active says whether anything records: one atomic load, so an open
// builds nothing for recorders when there are none.
func (rs *recorders) active() bool { return rs.set.Load() != nil }

func (rs *recorders) add(r *Recorder) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var cur []*Recorder
	if p := rs.set.Load(); p != nil {
		cur = *p
	}
	next := append(append([]*Recorder(nil), cur...), r)
	rs.set.Store(&next)
}

func (rs *recorders) remove(r *Recorder) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	p := rs.set.Load()
	if p == nil {
		return
	}
	var next []*Recorder
	for _, x := range *p {
		if x != r {
			next = append(next, x)
		}
	}
	if len(next) == 0 {
		rs.set.Store(nil)
		return
	}
	rs.set.Store(&next)
}

// noteOpen tells the layer's recorders that inode ino was opened.
func (c *Content) noteOpen(ino uint64) {
	p := c.recording.set.Load()
	if p == nil {
		return
	}
	for _, r := range *p {
		r.opened(c.digest, ino, c.idx)
	}
}

// noteWhole tells the layer's recorders that inode ino is read whole
// where they cannot see it.
func (c *Content) noteWhole(ino uint64) {
	p := c.recording.set.Load()
	if p == nil {
		return
	}
	for _, r := range *p {
		r.wholeFile(c.digest, ino)
	}
}

// noteRead tells the layer's recorders that chunk ch of inode ino was read.
func (c *Content) noteRead(ino uint64, ch index.Chunk) {
	p := c.recording.set.Load()
	if p == nil {
		return
	}
	for _, r := range *p {
		r.readChunk(c.digest, ino, ch.FileOffset, c.idx)
	}
}

// Record starts recording the files opened in layers (those mounted now).
// StopRecording ends it.
func (p *Pool) Record(layers []digest.Digest) *Recorder {
	r := &Recorder{layers: layers, seen: map[recordKey]int{}}
	var read []*LayerMount
	p.mu.Lock()
	for _, d := range layers {
		if pl, ok := p.layers[d]; ok && pl.content != nil {
			pl.content.recording.add(r)
			if pl.mount != nil && pl.mount.lfs.reads.Load() > 0 {
				read = append(read, pl.mount)
			}
		}
	}
	p.mu.Unlock()
	// A layer other mounts read has files in the kernel's page cache,
	// whose reads never reach the daemon (nor opens, in a layer that
	// opens files without it): drop them, so the workload's reads are
	// seen. The pages come back from the chunk cache.
	for _, m := range read {
		if err := m.dropPageCache(); err != nil {
			slog.Warn("recording: the layer's cached pages stay; files other mounts read may be missing from the list",
				"dir", m.Dir, "error", err)
		}
	}
	return r
}

// StopRecording detaches r from its layers; r keeps what it recorded.
func (p *Pool) StopRecording(r *Recorder) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range r.layers {
		if pl, ok := p.layers[d]; ok && pl.content != nil {
			pl.content.recording.remove(r)
		}
	}
}

// ListedStats says what a prefetch of a list did.
type ListedStats struct {
	Files   int   // listed files found in their layers
	Missing int   // listed files not found (or not regular files): skipped
	Streams int   // compressed streams fetched
	Bytes   int64 // compressed bytes fetched
}

// listedPiece is one request's worth of a list's chunks, all of one layer.
type listedPiece struct {
	c      *Content
	chunks []index.BlobChunk
	size   int64 // compressed bytes of its streams
}

// PrefetchListed fetches, verifies and caches the uncached chunks of the
// listed files, in list order, as pieces of about prefetchPiece bytes
// asked for one after another (see inOrder). list's layers must be mounted (those that
// are not are skipped); the caller has checked that they are the layers of
// the image being mounted. While it runs, misses in those layers take no
// speculative read-ahead: the list knows better what comes next. It
// returns when done or when ctx ends.
func (p *Pool) PrefetchListed(ctx context.Context, list *PrefetchList) ListedStats {
	contents := make([]*Content, len(list.Layers))
	p.mu.Lock()
	for i, d := range list.Layers {
		if pl, ok := p.layers[d]; ok {
			select {
			case <-pl.ready:
				contents[i] = pl.content
			default:
			}
		}
	}
	p.mu.Unlock()
	return prefetchListed(ctx, contents, list)
}

// prefetchListed is PrefetchListed on the layers' contents (nil: not
// mounted), in the list's layer order.
func prefetchListed(ctx context.Context, contents []*Content, list *PrefetchList) ListedStats {
	for _, c := range contents {
		if c != nil {
			c.listed.Add(1)
			defer c.listed.Add(-1)
			if stop := c.stopLandmark.Load(); stop != nil {
				(*stop)()
			}
		}
	}
	out, st := listedPieces(contents, list)
	sizes := make([]int64, len(out))
	for i, pc := range out {
		sizes[i] = pc.size
	}
	var mu sync.Mutex
	// The layers of an image come over one link: the first's estimate.
	var link *linkEstimate
	for _, c := range contents {
		if c != nil {
			link = c.link
			break
		}
	}
	inOrder(ctx, link, sizes, func(i int, here func(int64)) {
		pc := out[i]
		// Under the layer's lifetime, not ctx's: a reader of another
		// mount of the layer may be waiting for these streams, and an
		// unmount of this image must not fail its read. ctx stops the
		// prefetch between pieces.
		done := make(chan struct{})
		pc.c.goBackground(func(bg context.Context) {
			defer close(done)
			n, b := pc.c.fetchPiece(bg, pc.chunks, here, "fs: listed prefetch failed")
			mu.Lock()
			st.Streams += n
			st.Bytes += b
			mu.Unlock()
		})
		<-done
	})
	return st
}

// listedPieces cuts the uncached chunks of the listed files into pieces of
// at least prefetchPiece compressed bytes, each of one layer, in list order.
func listedPieces(contents []*Content, list *PrefetchList) ([]listedPiece, ListedStats) {
	var st ListedStats
	var out []listedPiece
	for _, f := range list.Files {
		c := contents[f.Layer]
		if c == nil {
			st.Missing++
			continue
		}
		chunks, ok := c.uncachedFile(f.Path, f.Chunks)
		if !ok {
			st.Missing++
			continue
		}
		st.Files++
		for _, ch := range chunks {
			n := len(out)
			if n == 0 || out[n-1].c != c {
				out = append(out, listedPiece{c: c})
				n++
			}
			last := out[n-1].chunks
			sameStream := len(last) > 0 && last[len(last)-1].BlobOffset == ch.BlobOffset
			if !sameStream && out[n-1].size >= prefetchPiece {
				out = append(out, listedPiece{c: c})
				n++
			}
			if !sameStream {
				out[n-1].size += ch.BlobLength
			}
			out[n-1].chunks = append(out[n-1].chunks, ch)
		}
	}
	return out, st
}

// uncachedFile resolves p from the layer's root and returns the uncached
// chunks of the regular file there, only those at the file offsets want
// when want is not empty; ok is false when there is no such file.
func (c *Content) uncachedFile(p string, want []int64) ([]index.BlobChunk, bool) {
	ino := uint64(index.RootIno)
	var e index.Entry
	for _, name := range strings.Split(p, "/") {
		next, found, err := c.idx.Lookup(ino, name)
		if err != nil || !found {
			return nil, false
		}
		ino, e = next.Ino, next
	}
	if e.Type != index.TypeReg {
		return nil, false
	}
	if e.Size == 0 {
		return nil, true
	}
	chunks, err := c.idx.Chunks(ino, 0, e.Size)
	if err != nil {
		return nil, false
	}
	var at map[int64]bool
	if len(want) > 0 {
		at = make(map[int64]bool, len(want))
		for _, off := range want {
			at[off] = true
		}
	}
	var out []index.BlobChunk
	for _, ch := range chunks {
		if (at == nil || at[ch.FileOffset]) && !c.cache.Has(ch.Digest) {
			out = append(out, index.BlobChunk{Ino: ino, Chunk: ch})
		}
	}
	return out, true
}
