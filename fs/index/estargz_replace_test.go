package index

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// TestReplacedEntries reads the TOCs of testdata/replace.txtar, in which
// names repeat or whiteouts meet entries of their own layer, and compares
// each index with the tree the file states (see its comment).
func TestReplacedEntries(t *testing.T) {
	for _, tc := range replaceCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			blob := tocBlob(t, make([]byte, hostileDataLen), tc.toc)
			idx, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
			if err != nil {
				t.Fatal(err)
			}
			if got := dumpTree(idx); got != tc.tree {
				t.Errorf("index lists\n%s\nwant\n%s", got, tc.tree)
			}
		})
	}
}

type replaceCase struct {
	name string
	toc  []byte
	tree string
}

func replaceCases(t testing.TB) []replaceCase {
	t.Helper()
	data, err := os.ReadFile("testdata/replace.txtar")
	if err != nil {
		t.Fatal(err)
	}
	files := parseTxtar(data)
	var cases []replaceCase
	for i, f := range files {
		name, ok := strings.CutSuffix(f[0], ".json")
		if !ok {
			continue
		}
		if i+1 >= len(files) || files[i+1][0] != name+".tree" {
			t.Fatalf("%s has no .tree after it", name)
		}
		cases = append(cases, replaceCase{name, []byte(f[1]), strings.TrimSpace(files[i+1][1])})
	}
	if len(cases) == 0 {
		t.Fatal("no cases in testdata/replace.txtar")
	}
	return cases
}

// dumpTree lists idx in the form of testdata/replace.txtar.
func dumpTree(idx *Index) string {
	var lines []string
	var walk func(ino uint64, path string)
	walk = func(ino uint64, path string) {
		e := idx.Entries[ino-RootIno]
		line := fmt.Sprintf("%s #%d %v %04o", path, e.Ino, e.Type, e.Mode)
		if e.UID != 0 || e.GID != 0 {
			line += fmt.Sprintf(" %d:%d", e.UID, e.GID)
		}
		if e.Size != 0 {
			line += fmt.Sprintf(" size=%d", e.Size)
		}
		if chunks := idx.Chunks[ino]; len(chunks) > 0 {
			line += fmt.Sprintf(" data=@%d/%d", chunks[0].BlobOffset, len(chunks))
		}
		if e.Nlink != 0 && e.Type != TypeDir { // a directory's marks one made anew (IsRecreated)
			line += fmt.Sprintf(" nlink=%d", e.Nlink)
		}
		if e.LinkTarget != "" {
			line += " ->" + e.LinkTarget
		}
		if e.Type == TypeChar || e.Type == TypeBlock {
			line += fmt.Sprintf(" dev=%d:%d", e.DevMajor, e.DevMinor)
		}
		var xattrs []string
		for name := range e.Xattrs {
			if name != XattrOverlayOpaque {
				xattrs = append(xattrs, name)
			}
		}
		if len(xattrs) > 0 {
			slices.Sort(xattrs)
			line += " xattrs=" + strings.Join(xattrs, ",")
		}
		if string(e.Xattrs[XattrOverlayOpaque]) == "y" {
			line += " opaque"
		}
		lines = append(lines, line)
		for _, d := range idx.Children[ino] {
			walk(d.Ino, strings.TrimPrefix(path+"/"+d.Name, "./"))
		}
	}
	walk(RootIno, ".")
	return strings.Join(lines, "\n")
}

// TestReplacedEntriesScale replaces every name of a large directory, in
// an order that defeats the look-up of the last name, and whites out a
// large directory many times: both must take time linear in the TOC.
func TestReplacedEntriesScale(t *testing.T) {
	const n = 50000
	var entries []*estargz.TOCEntry
	for i := range n {
		entries = append(entries, &estargz.TOCEntry{Name: fmt.Sprintf("d/.wh.f%d", i), Type: "reg"})
	}
	for i := range n {
		entries = append(entries, &estargz.TOCEntry{Name: fmt.Sprintf("d/f%d", i), Type: "fifo"})
	}
	for i := range n {
		entries = append(entries, &estargz.TOCEntry{Name: fmt.Sprintf("d/f%d", i), Type: "reg"})
	}
	for range n {
		entries = append(entries, &estargz.TOCEntry{Name: ".wh.d", Type: "reg"})
	}
	idx := readJTOC(t, nil, entries)
	d := lookupPath(idx, "d")
	if len(idx.Entries) != n+2 || string(d.Xattrs[XattrOverlayOpaque]) != "y" || len(idx.Children[d.Ino]) != n {
		t.Errorf("%d entries, d = %+v with %d names", len(idx.Entries), d, len(idx.Children[d.Ino]))
	}
	if f := lookupPath(idx, "d/f7"); f == nil || f.Type != TypeReg {
		t.Errorf("d/f7 = %+v", f)
	}
}
