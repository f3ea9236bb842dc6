package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

const hostileDataLen = 1000 // data bytes before the TOC in testdata/hostile.txtar blobs

type hostileCase struct {
	name string
	toc  []byte
	want string
}

func hostileCases(t testing.TB) []hostileCase {
	t.Helper()
	data, err := os.ReadFile("testdata/hostile.txtar")
	if err != nil {
		t.Fatal(err)
	}
	files := parseTxtar(data)
	var cases []hostileCase
	for _, f := range files {
		if name, ok := strings.CutSuffix(f[0], ".json"); ok {
			want := ""
			for _, g := range files {
				if g[0] == name+".want" {
					want = strings.TrimSpace(g[1])
				}
			}
			if want == "" {
				t.Fatalf("%s has no .want", name)
			}
			cases = append(cases, hostileCase{name, []byte(f[1]), want})
		}
	}
	if len(cases) == 0 {
		t.Fatal("no cases in testdata/hostile.txtar")
	}
	return cases
}

// parseTxtar splits a txtar archive ("-- name --" lines, each followed by
// that file's content) into name/content pairs, dropping the leading
// comment. (go-internal's txtar needs golang.org/x/tools, which go.mod
// does not have; the format is simple enough to read here.)
func parseTxtar(data []byte) [][2]string {
	var files [][2]string
	for _, line := range strings.SplitAfter(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(trimmed, "-- "); ok && strings.HasSuffix(name, " --") {
			files = append(files, [2]string{strings.TrimSuffix(name, " --"), ""})
			continue
		}
		if len(files) > 0 {
			files[len(files)-1][1] += line
		}
	}
	return files
}

func TestHostileTOCs(t *testing.T) {
	for _, tc := range hostileCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			blob := tocBlob(t, make([]byte, hostileDataLen), tc.toc)
			_, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
			assertInvalid(t, err, tc.want)
		})
	}
}

func assertInvalid(t *testing.T, err error, want string) {
	t.Helper()
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v; want one wrapping ErrInvalid and saying %q", err, want)
	}
}

func TestHostileGeneratedTOCs(t *testing.T) {
	many := map[string][]byte{}
	for i := range MaxXattrs + 1 {
		many[fmt.Sprintf("user.x%d", i)] = []byte("v")
	}
	longPath := strings.Repeat(strings.Repeat("p", 200)+"/", 20) + strings.Repeat("q", 97) // 4097 bytes
	cases := []struct {
		name    string
		entries []*estargz.TOCEntry
		want    string
	}{
		{"long-path", []*estargz.TOCEntry{{Name: longPath, Type: "reg"}}, "more than 4096"},
		{"too-many-xattrs", []*estargz.TOCEntry{{Name: "a", Type: "reg", Xattrs: many}}, "129 xattrs"},
		{"xattr-too-big", []*estargz.TOCEntry{{Name: "a", Type: "dir",
			Xattrs: map[string][]byte{"user.big": make([]byte, MaxXattrSize+1)}}}, "more than 65536"},
		{"xattr-name-too-long", []*estargz.TOCEntry{{Name: "a", Type: "dir",
			Xattrs: map[string][]byte{"user." + strings.Repeat("n", 251): nil}}}, "invalid xattr name"},
		{"symlink-target-too-long", []*estargz.TOCEntry{{Name: "a", Type: "symlink", LinkName: longPath}}, "more than 4096"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			blob := jtocBlob(t, make([]byte, hostileDataLen), tc.entries)
			_, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
			assertInvalid(t, err, tc.want)
		})
	}
}

func TestHostileLimits(t *testing.T) {
	ctx := context.Background()
	small := limits{entries: 10, chunks: 10, tocSize: MaxTOCSize, tocJSON: maxTOCJSONSize}
	read := func(blob []byte, lim limits) error {
		_, err := readEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), "", lim)
		return err
	}
	var files []*estargz.TOCEntry
	for i := range 10 {
		files = append(files, &estargz.TOCEntry{Name: fmt.Sprintf("f%d", i), Type: "reg"})
	}
	blob := jtocBlob(t, nil, files)
	if err := read(blob, small); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "more than 10 entries") {
		t.Errorf("entries limit: %v", err) // 10 files + the root
	}
	if err := read(jtocBlob(t, nil, files[:9]), small); err != nil {
		t.Errorf("9 files + root at a limit of 10: %v", err)
	}
	// Implicit directories count as entries too.
	deep := jtocBlob(t, nil, []*estargz.TOCEntry{{Name: "a/b/c/d/e/f/g/h/i/j/k", Type: "fifo"}})
	assertInvalid(t, read(deep, small), "more than 10 entries")
	big := []*estargz.TOCEntry{{Name: "big", Type: "reg", Size: 11, ChunkSize: 1, ChunkDigest: digest.FromString("x").String()}}
	for i := 1; i < 11; i++ {
		big = append(big, &estargz.TOCEntry{Name: "big", Type: "chunk", Offset: int64(i), ChunkOffset: int64(i),
			ChunkSize: 1, ChunkDigest: digest.FromString("x").String()})
	}
	assertInvalid(t, read(jtocBlob(t, make([]byte, 20), big), small), "more than 10 chunks")
	rawEntries := limits{entries: 2, chunks: 2, tocSize: MaxTOCSize, tocJSON: maxTOCJSONSize}
	// Entries are converted as they are read, so the raw count is what
	// stops entries that make no inode (identical directory repeats).
	repeats := jtocBlob(t, nil, slices.Repeat([]*estargz.TOCEntry{{Name: "d", Type: "dir"}}, 10))
	assertInvalid(t, read(repeats, rawEntries), "TOC has more than 4 entries")
	tinyJSON := limits{entries: 100, chunks: 100, tocSize: MaxTOCSize, tocJSON: 100}
	assertInvalid(t, read(blob, tinyJSON), "TOC JSON is more than 100 bytes")
	tinyTOC := limits{entries: 100, chunks: 100, tocSize: 50, tocJSON: maxTOCJSONSize}
	assertInvalid(t, read(blob, tinyTOC), "more than the limit of 50")
}

// TestHostileTOCSizeBeforeRead uses the real MaxTOCSize: a footer that
// puts the TOC 300 MiB before the end must be refused after one read,
// without fetching (or allocating) the TOC.
func TestHostileTOCSizeBeforeRead(t *testing.T) {
	const size = 300 << 20
	r := &countingReaderAt{r: sparseReaderAt{size: size, tail: footer(0)}}
	_, err := ReadEStargz(context.Background(), r, size, "")
	assertInvalid(t, err, fmt.Sprintf("more than the limit of %d", MaxTOCSize))
	if len(r.reads) != 1 {
		t.Errorf("%d reads: %v", len(r.reads), r.reads)
	}
}

func TestHostileFooterAndTOCStream(t *testing.T) {
	good := jtocBlob(t, []byte("0123456789"), []*estargz.TOCEntry{{Name: "a", Type: "dir"}})
	body := good[:len(good)-estargz.FooterSize]
	shortExtra := bytes.Clone(footer(10))
	shortExtra[10] = 10 // XLEN: an extra field too short for the subfield it announces
	cases := []struct {
		name string
		blob []byte
		want string
	}{
		{"toc-offset-past-end", append(bytes.Clone(body), footer(int64(len(good)))...), "outside"},
		{"toc-offset-in-footer", append(bytes.Clone(body), footer(int64(len(body)))...), "outside"},
		{"toc-not-gzip", append(bytes.Clone(body), footer(2)...), "TOC"},
		{"toc-truncated", append(bytes.Clone(body[:len(body)-20]), footer(10)...), "TOC"},
		{"toc-wrong-tar-name", wrongTOCName(t), "stargz.index.json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadEStargz(context.Background(), bytes.NewReader(tc.blob), int64(len(tc.blob)), "")
			assertInvalid(t, err, tc.want)
		})
	}
	blob := append(bytes.Clone(body), shortExtra...)
	_, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
	if !errors.Is(err, ErrNotEStargz) {
		t.Errorf("footer with a short extra field: %v", err)
	}
}

// wrongTOCName is a blob whose TOC stream holds a tar entry of another name.
func wrongTOCName(t *testing.T) []byte {
	var buf bytes.Buffer
	writeGzipTar(t, &buf, "other.json", []byte(`{"version":1,"entries":[]}`))
	buf.Write(footer(0))
	return buf.Bytes()
}

// TestTOCDigestMatchesEStargz checks that the digest the reader verifies
// is the one estargz's own parser computes for the same TOC stream, so an
// annotation written by any estargz-based tool matches.
func TestTOCDigestMatchesEStargz(t *testing.T) {
	blob, tocDigest := buildEStargz(t, writeTar(t, fixtureEntries()))
	tocOff, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	_, theirs, err := new(estargz.GzipDecompressor).ParseTOC(bytes.NewReader(blob[tocOff : len(blob)-estargz.FooterSize]))
	if err != nil {
		t.Fatal(err)
	}
	if theirs != tocDigest {
		t.Fatalf("estargz parses digest %s, Build reported %s", theirs, tocDigest)
	}
	compressed, _, err := readTOCBytes(context.Background(), bytes.NewReader(blob), int64(len(blob)), defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	toc, err := openTOC(bytes.NewReader(compressed), "", defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	js, err := io.ReadAll(toc)
	if err != nil {
		t.Fatal(err)
	}
	if ours := digest.FromBytes(js); ours != theirs {
		t.Errorf("reader hashes to %s, estargz to %s", ours, theirs)
	}
}
