package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

var (
	testImage  = digest.FromString("image")
	testLayer0 = digest.FromString("layer0")
)

func listJSON(t testing.TB, l any) []byte {
	t.Helper()
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePrefetchList(t *testing.T) {
	good := PrefetchList{MediaType: PrefetchListMediaType, Image: testImage, Layers: []digest.Digest{testLayer0},
		Files: []ListedFile{{Layer: 0, Path: "usr/bin/go", Chunks: []int64{4 << 20, 0}}, {Layer: 0, Path: "a b/ü.txt"}}}
	got, err := ParsePrefetchList(listJSON(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Files, good.Files) || got.Image != testImage {
		t.Fatalf("round trip: %+v", got)
	}
	bad := map[string]func(l *PrefetchList){
		"media type":         func(l *PrefetchList) { l.MediaType = "application/json" },
		"image digest":       func(l *PrefetchList) { l.Image = "sha256:xyz" },
		"no layers":          func(l *PrefetchList) { l.Layers = nil },
		"layer digest":       func(l *PrefetchList) { l.Layers = []digest.Digest{"md5:00"} },
		"layer out of range": func(l *PrefetchList) { l.Files[0].Layer = 1 },
		"negative layer":     func(l *PrefetchList) { l.Files[0].Layer = -1 },
		"parent":             func(l *PrefetchList) { l.Files[0].Path = "../etc/passwd" },
		"inner parent":       func(l *PrefetchList) { l.Files[0].Path = "usr/../../etc/passwd" },
		"absolute":           func(l *PrefetchList) { l.Files[0].Path = "/etc/passwd" },
		"dot":                func(l *PrefetchList) { l.Files[0].Path = "." },
		"dotdot":             func(l *PrefetchList) { l.Files[0].Path = ".." },
		"unclean":            func(l *PrefetchList) { l.Files[0].Path = "usr//bin" },
		"trailing slash":     func(l *PrefetchList) { l.Files[0].Path = "usr/bin/" },
		"empty path":         func(l *PrefetchList) { l.Files[0].Path = "" },
		"NUL":                func(l *PrefetchList) { l.Files[0].Path = "usr/bin\x00/go" },
		"long path":          func(l *PrefetchList) { l.Files[0].Path = strings.Repeat("a/", 3000) + "b" },
		"negative chunk":     func(l *PrefetchList) { l.Files[0].Chunks = []int64{0, -1} },
		"too many chunks":    func(l *PrefetchList) { l.Files[0].Chunks = make([]int64, maxListChunks+1) },
		"too many files": func(l *PrefetchList) {
			l.Files = make([]ListedFile, maxListFiles+1)
			for i := range l.Files {
				l.Files[i] = ListedFile{Path: "f"}
			}
		},
	}
	for name, spoil := range bad {
		t.Run(name, func(t *testing.T) {
			l := good
			l.Files = slices.Clone(good.Files)
			spoil(&l)
			if _, err := ParsePrefetchList(listJSON(t, l)); !errors.Is(err, ErrBadPrefetchList) {
				t.Fatalf("got %v, want ErrBadPrefetchList", err)
			}
		})
	}
	for name, b := range map[string][]byte{
		"unknown field": []byte(`{"mediaType":"` + PrefetchListMediaType + `","image":"` + testImage.String() + `","layers":["` + testLayer0.String() + `"],"files":[],"x":1}`),
		"not JSON":      []byte("files: all"),
		"too big":       make([]byte, MaxPrefetchListBytes+1),
	} {
		if _, err := ParsePrefetchList(b); !errors.Is(err, ErrBadPrefetchList) {
			t.Errorf("%s: got %v, want ErrBadPrefetchList", name, err)
		}
	}
}

func FuzzParsePrefetchList(f *testing.F) {
	f.Add(listJSON(f, PrefetchList{MediaType: PrefetchListMediaType, Image: testImage, Layers: []digest.Digest{testLayer0},
		Files: []ListedFile{{Layer: 0, Path: "usr/bin/go"}}}))
	f.Add([]byte(`{"mediaType":"` + PrefetchListMediaType + `","files":[{"layer":0,"path":"../x"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParsePrefetchList(b)
		if err != nil {
			return
		}
		for _, f := range l.Files {
			if f.Layer < 0 || f.Layer >= len(l.Layers) || checkListedPath(f.Path) != nil ||
				filepath.IsAbs(f.Path) || strings.Contains("/"+f.Path+"/", "/../") {
				t.Fatalf("accepted %+v", f)
			}
		}
		again, err := l.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParsePrefetchList(again); err != nil {
			t.Fatalf("re-encoded list refused: %v", err)
		}
	})
}

func listOf(paths ...string) *PrefetchList {
	l := &PrefetchList{MediaType: PrefetchListMediaType, Image: testImage, Layers: []digest.Digest{testLayer0}}
	for _, p := range paths {
		l.Files = append(l.Files, ListedFile{Layer: 0, Path: p})
	}
	return l
}

func dirLayer(t *testing.T) *testLayer {
	t.Helper()
	var names []string
	var sizes []int
	for i := 0; i < 24; i++ {
		names = append(names, fmt.Sprintf("d%d/f%02d", i%3, i))
		sizes = append(sizes, 200<<10)
	}
	return newTestLayer(t, names, sizes)
}

func TestListedPiecesFollowTheList(t *testing.T) {
	l := dirLayer(t)
	order := []string{"d2/f20", "d0/f03", "d2/f11", "d1/f07"}
	// Not found, or not regular files: skipped, nothing fetched for them.
	hostile := []string{"d0", "d9/f00", "d0/f03/x", "nothere"}
	pieces, st := listedPieces([]*Content{l.content}, listOf(append(slices.Clone(order), hostile...)...))
	if st.Files != len(order) || st.Missing != len(hostile) {
		t.Fatalf("stats %+v, want %d files, %d missing", st, len(order), len(hostile))
	}
	var inos []uint64
	for _, p := range pieces {
		for _, ch := range p.chunks {
			if len(inos) == 0 || inos[len(inos)-1] != ch.Ino {
				inos = append(inos, ch.Ino)
			}
		}
	}
	var want []uint64
	for _, name := range order {
		want = append(want, l.entry(t, name).Ino)
	}
	if !slices.Equal(inos, want) {
		t.Fatalf("pieces hold inodes %v, want the list's order %v", inos, want)
	}
	// 4 files of 200 KiB: pieces of at least prefetchPiece each (but the
	// last), cut between files.
	for i, p := range pieces {
		var n int64
		for _, ch := range p.chunks {
			n += ch.BlobLength
		}
		if i < len(pieces)-1 && (n < prefetchPiece || n >= prefetchPiece+200<<10) {
			t.Errorf("piece %d of %d: %d bytes; want at least %d, less than a file more", i+1, len(pieces), n, prefetchPiece)
		}
	}
	npieces, acc := 1, 0
	for range order {
		if acc >= prefetchPiece {
			npieces, acc = npieces+1, 0
		}
		acc += 200 << 10
	}
	if len(pieces) != npieces {
		t.Errorf("%d pieces for %d files of 200 KiB and pieces of %d KiB; want %d", len(pieces), len(order), prefetchPiece>>10, npieces)
	}
}

func TestPrefetchListedFetchesListedFilesOnly(t *testing.T) {
	l := dirLayer(t)
	listed := []string{"d2/f20", "d0/f03", "d2/f11"}
	st := prefetchListed(context.Background(), []*Content{l.content}, listOf(listed...))
	l.settle()
	if st.Files != 3 || st.Streams != 3 {
		t.Fatalf("stats %+v, want 3 files in 3 streams", st)
	}
	_, n := l.blob.fetched()
	if n != st.Bytes {
		t.Fatalf("fetched %d bytes, the prefetch says %d", n, st.Bytes)
	}
	l.blob.reset()
	for _, name := range listed {
		l.read(t, name, 0, 200<<10)
	}
	if calls, _ := l.blob.fetched(); calls != 0 {
		t.Fatalf("reading the listed files fetched %d times", calls)
	}
	for _, name := range []string{"d0/f00", "d2/f05", "d1/f22"} {
		for _, ch := range mustChunks(t, l, name) {
			if l.cache.Has(ch.Digest) {
				t.Fatalf("%s was prefetched but is not listed", name)
			}
		}
	}
	// Again: everything listed is cached, nothing is fetched.
	l.blob.reset()
	if st := prefetchListed(context.Background(), []*Content{l.content}, listOf(listed...)); st.Streams != 0 {
		t.Fatalf("second prefetch fetched %d streams", st.Streams)
	}
}

// The next pieces of a list are asked for while the bytes of those before
// are still coming, as soon as few enough are still to come: bytes, not
// requests, decide, so that no round trip is spent with the link idle and
// later pieces do not crowd out earlier ones.
func TestPrefetchListedAsksAheadOfArrivingBytes(t *testing.T) {
	var names []string
	var sizes []int
	// Pieces of three small files and a large one: a piece that lacks
	// its last stream holds most of its share of the window.
	for i := 0; i < 96; i++ {
		names = append(names, fmt.Sprintf("d%d/f%02d", i%4, i))
		sizes = append(sizes, 32<<10)
		if i%4 == 3 {
			sizes[i] = 192 << 10
		}
	}
	l := newTestLayer(t, names, sizes)
	list := listOf(names...)
	pieces, _ := listedPieces([]*Content{l.content}, list)
	if len(pieces) != len(names)/4 {
		t.Fatalf("%d pieces; the test wants %d", len(pieces), len(names)/4)
	}
	gate := make(chan struct{})
	l.blob.mu.Lock()
	l.blob.lastWaits = gate
	l.blob.mu.Unlock()
	done := make(chan ListedStats)
	go func() { done <- prefetchListed(context.Background(), []*Content{l.content}, list) }()
	// Each request's bytes are all here but its last part's. Four requests
	// at a time would stop at four; bytes to come go on.
	const requests = 4
	deadline := time.Now().Add(10 * time.Second)
	calls := 0
	for ; calls <= requests && time.Now().Before(deadline); calls, _ = l.blob.fetched() {
		time.Sleep(time.Millisecond)
	}
	// Nor does it ask for everything at once: what is asked for and not
	// here stays about prefetchAhead.
	time.Sleep(50 * time.Millisecond)
	calls, _ = l.blob.fetched()
	close(gate)
	st := <-done
	l.settle()
	if lacking := int64(calls) * (192<<10 - progressPart); calls <= requests || lacking > prefetchAhead+192<<10 {
		t.Fatalf("%d of %d requests asked for while every one lacked its last part; want more than %d, at most %d KiB lacking",
			calls, len(pieces), requests, (prefetchAhead+192<<10)>>10)
	}
	if st.Files != len(names) || st.Streams != len(names) {
		t.Fatalf("stats %+v, want %d files in as many streams", st, len(names))
	}
	for _, name := range names {
		for _, ch := range mustChunks(t, l, name) {
			if !l.cache.Has(ch.Digest) {
				t.Fatalf("%s is listed but not cached", name)
			}
		}
	}
}

// A large stream is asked for in parts; parts that come out of order (two
// requests) still make the stream.
func TestPrefetchListedPartsInAnyOrder(t *testing.T) {
	l := newTestLayer(t, []string{"a/big", "b/small"}, []int{900 << 10, 4 << 10})
	l.blob.mu.Lock()
	l.blob.reverse = true
	l.blob.mu.Unlock()
	if st := prefetchListed(context.Background(), []*Content{l.content}, listOf("a/big", "b/small")); st.Streams != 2 {
		t.Fatalf("stats %+v, want 2 streams fetched", st)
	}
	l.settle()
	for _, name := range []string{"a/big", "b/small"} {
		for _, ch := range mustChunks(t, l, name) {
			if !l.cache.Has(ch.Digest) {
				t.Fatalf("%s: not cached (its parts put together in the wrong order?)", name)
			}
		}
	}
	l.blob.reset()
	l.read(t, "a/big", 0, 900<<10)
	if calls, _ := l.blob.fetched(); calls != 0 {
		t.Fatalf("reading the prefetched file fetched %d times", calls)
	}
}

func TestPrefetchListedStopsWithItsContext(t *testing.T) {
	l := dirLayer(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	st := prefetchListed(ctx, []*Content{l.content}, listOf("d2/f20", "d0/f03"))
	l.settle()
	if calls, _ := l.blob.fetched(); calls != 0 || st.Streams != 0 {
		t.Fatalf("a stopped prefetch fetched %d times (%+v)", calls, st)
	}
}

func TestRecorderNotesOpensInOrder(t *testing.T) {
	requireRoot(t)
	bl := buildEStargz(t, []string{"a/one", "a/two", "b/three", "four"}, []int{10, 20, 30, 40}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	if !ml.mount.lfs.openless.Load() {
		t.Fatal("a layer of small files keeps its opens: this test is for one whose opens the daemon never sees")
	}
	r := &Recorder{layers: []digest.Digest{"sha256:test"}, seen: map[recordKey]int{}}
	ml.content.recording.add(r)
	layer := ml.content.digest
	for _, name := range []string{"b/three", "four", "b/three", "a/one"} {
		b, err := os.ReadFile(filepath.Join(ml.dir, name))
		if err != nil || len(b) != len(bl.files[name]) {
			t.Fatalf("read %s: %d bytes, %v", name, len(b), err)
		}
	}
	// Opened, never read: nothing to fetch, not listed.
	f, err := os.Open(filepath.Join(ml.dir, "a/two"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := os.ReadDir(filepath.Join(ml.dir, "a")); err != nil {
		t.Fatal(err)
	}
	ml.content.recording.remove(r)
	if _, err := os.ReadFile(filepath.Join(ml.dir, "a/two")); err != nil {
		t.Fatal(err)
	}
	other := digest.FromString("another layer")
	got := r.List(testImage, []digest.Digest{other, layer})
	want := []ListedFile{{1, "b/three", []int64{0}}, {1, "four", []int64{0}}, {1, "a/one", []int64{0}}}
	if !reflect.DeepEqual(got.Files, want) {
		t.Fatalf("recorded %v, want %v (first opens, in order, none after the recording stopped)", got.Files, want)
	}
	got.Layers = []digest.Digest{other, testLayer0} // the test layer's name is no digest
	if _, err := ParsePrefetchList(listJSON(t, got)); err != nil {
		t.Fatalf("the recorded list does not parse: %v", err)
	}
	// A list of other layers leaves this layer's files out.
	if l := r.List(testImage, []digest.Digest{other}); len(l.Files) != 0 {
		t.Fatalf("files of a layer not in the image: %v", l.Files)
	}
}

// TestRecordedChunksOnly: of a file of several chunks, a list that names
// some fetches those alone; a recorder notes the chunks a read touches.
func TestRecordedChunksOnly(t *testing.T) {
	l := newTestLayer(t, []string{"lib/big.so", "lib/small"}, []int{3<<20 + 100, 10})
	list := listOf("lib/big.so", "lib/small")
	list.Files[0].Chunks = []int64{2 << 20, 0}
	pieces, st := listedPieces([]*Content{l.content}, list)
	var offs []int64
	for _, p := range pieces {
		for _, ch := range p.chunks {
			offs = append(offs, ch.FileOffset)
		}
	}
	if st.Files != 2 || !slices.Equal(offs, []int64{0, 2 << 20, 0}) {
		t.Fatalf("pieces hold chunks at %v (%+v); want big.so's 0 and 2 MiB, then small's", offs, st)
	}

	r := &Recorder{layers: []digest.Digest{l.content.digest}, seen: map[recordKey]int{}}
	l.content.recording.add(r)
	e := l.entry(t, "lib/big.so")
	l.content.noteOpen(e.Ino)
	l.read(t, "lib/big.so", 1<<20+5, 4096)
	l.read(t, "lib/big.so", 3<<20, 100)
	l.read(t, "lib/big.so", 1<<20, 10)
	got := r.List(testImage, []digest.Digest{l.content.digest})
	if len(got.Files) != 1 || !slices.Equal(got.Files[0].Chunks, []int64{1 << 20, 3 << 20}) {
		t.Fatalf("recorded %+v; want big.so's chunks at 1 and 3 MiB, in the order read", got.Files)
	}
}

// TestPassthroughReadListsWholeFile: a file read only where the recorder
// cannot see its chunks (a passthrough open) is listed whole.
func TestPassthroughReadListsWholeFile(t *testing.T) {
	l := newTestLayer(t, []string{"bin/tool", "lib/part.so"}, []int{3 << 20, 3 << 20})
	r := &Recorder{layers: []digest.Digest{l.content.digest}, seen: map[recordKey]int{}}
	l.content.recording.add(r)
	tool, part := l.entry(t, "bin/tool"), l.entry(t, "lib/part.so")
	l.content.noteOpen(tool.Ino)
	l.content.noteWhole(tool.Ino) // read by passthrough only
	l.content.noteOpen(part.Ino)
	l.read(t, "lib/part.so", 2<<20, 10)
	// Opened again by passthrough, after reads the recording saw: those
	// chunks stay what the list names.
	l.content.noteWhole(part.Ino)
	got := r.List(testImage, []digest.Digest{l.content.digest}).Files
	want := []ListedFile{{0, "bin/tool", nil}, {0, "lib/part.so", []int64{2 << 20}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("recorded %+v, want %+v", got, want)
	}
}
