package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
)

// tarLayer indexes a tar of the given entries: a name ending in "/" is a
// directory, any other a regular file.
func tarLayer(t *testing.T, names ...string) *index.Memory {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: 1}
		if n[len(n)-1] == '/' {
			h.Typeflag, h.Size, h.Mode = tar.TypeDir, 0, 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("x"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	idx, err := index.ReadTar(context.Background(), bytes.NewReader(b), int64(len(b)), digest.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return index.NewMemory(idx, int64(len(b)))
}

// TestRegularIn: a prioritized path is listed in the layer its file comes
// from in the union, as overlayfs stacks the layers, and not at all when
// an upper layer deletes or hides it or it is no regular file.
func TestRegularIn(t *testing.T) {
	layers := []*index.Memory{
		tarLayer(t, "a/", "a/b", "a/c", "d/", "d/x", "o/", "o/lower", "o/both", "keep"),
		tarLayer(t, "a/", "a/.wh.b", "o/", "o/.wh..wh..opq", "o/both", "o/upper"),
		nil, // a layer without an index (fetched whole)
		tarLayer(t, "d", "keep2"),
	}
	for p, want := range map[string]int{
		"a/b": -1, "a/c": 0, "d/x": -1, "d": 3, "o/lower": -1, "o/both": 1, "o/upper": 1,
		"keep": 0, "keep2": 3, "a": -1, "o": -1, "no/such": -1,
	} {
		i, ok := regularIn(layers, p)
		if !ok {
			i = -1
		}
		if i != want {
			t.Errorf("%s: layer %d (found %v), want %d", p, i, ok, want)
		}
	}
	list := listedFiles(digest.FromString("img"), make([]Layer, 4), make([]*index.Index, 4), []string{"a/c"})
	if len(list.Files) != 0 || len(list.Layers) != 4 {
		t.Errorf("an empty list: %+v", list)
	}
	paths, err := cleanPaths([]string{"/a/c", "a/c", "./o//both", "/", "x\x00y"})
	if err == nil {
		t.Errorf("cleanPaths took the root and a NUL: %q", paths)
	}
	if paths, err = cleanPaths([]string{"/a/c", "a/c", "./o//both"}); err != nil || !slices.Equal(paths, []string{"a/c", "o/both"}) {
		t.Errorf("cleanPaths: %q, %v", paths, err)
	}
}
