package index

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestImplicitDirs: the directories a layer holds only as parents of its
// entries are listed, whatever the format, opaque ones too; a directory
// with an entry is not, even one whose time is 1970 (which an eStargz TOC
// leaves out). One made anew in place of a whiteout of the layer is
// marked as such.
func TestImplicitDirs(t *testing.T) {
	epoch := time.Unix(0, 0)
	entries := []tarEntry{
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a/b/file", Mode: 0o644, ModTime: fixtureTime}, body: []byte("x")},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "real/", Mode: 0o700, ModTime: epoch}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "real/in/f", Mode: 0o644, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opq/.wh..wh..opq", Mode: 0o644, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opq/f", Mode: 0o644, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "gone/.wh.x", Mode: 0o644, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.new", Mode: 0o644, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "new/f", Mode: 0o644, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "late/x/", Mode: 0o755, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "late/", Mode: 0o750, ModTime: fixtureTime}},
	}
	want := []string{".", "a", "a/b", "gone", "new", "opq", "real/in"}
	tarBlob := writeTar(t, entries)
	esgz, tocDigest := buildEStargz(t, tarBlob)
	for name, read := range map[string]func() (*Index, error){
		"tar": func() (*Index, error) { return Read(context.Background(), bytes.NewReader(tarBlob), tarDesc(tarBlob)) },
		"estargz": func() (*Index, error) {
			return Read(context.Background(), bytes.NewReader(esgz), Descriptor{Digest: digest.FromBytes(esgz), Size: int64(len(esgz)),
				MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Annotations: map[string]string{AnnotationTOCDigest: tocDigest.String()}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			idx, err := read()
			if err != nil {
				t.Fatal(err)
			}
			got, more := ImplicitDirs(idx)
			if !slices.Equal(got, want) || more {
				t.Errorf("ImplicitDirs = %q, %v; want %q", got, more, want)
			}
			if e := lookupPath(idx, "real"); e == nil || !e.ModTime.Equal(epoch) || e.Mode != 0o700 {
				t.Errorf("real: %+v, want mode 0700 at 1970", e)
			}
			for p, want := range map[string]bool{"new": true, "opq": false, "a": false} {
				if e := lookupPath(idx, p); e == nil || IsRecreated(e) != want {
					t.Errorf("%s: %+v, made anew %v, want %v", p, e, e != nil && IsRecreated(e), want)
				}
			}
			if info := NewMemory(idx, 1).Info(); !slices.Equal(info.Implicit, want) {
				t.Errorf("Info.Implicit = %q, want %q", info.Implicit, want)
			}
			db := testDB(t)
			if err := Save(db, "k", idx, 1); err != nil {
				t.Fatal(err)
			}
			l, err := Open(db, "k")
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Info().Implicit; !slices.Equal(got, want) {
				t.Errorf("stored Info.Implicit = %q, want %q", got, want)
			}
		})
	}
}

// TestImplicitDirsBounded: a layer of more directories without entries
// than MaxImplicit lists MaxImplicit and says there were more.
func TestImplicitDirsBounded(t *testing.T) {
	var entries []tarEntry
	for i := range MaxImplicit + 10 {
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%05d/f", i), Mode: 0o644, ModTime: fixtureTime}})
	}
	entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: fixtureTime}})
	blob := writeTar(t, entries)
	idx, err := Read(context.Background(), bytes.NewReader(blob), tarDesc(blob))
	if err != nil {
		t.Fatal(err)
	}
	got, more := ImplicitDirs(idx)
	if len(got) != MaxImplicit || !more || got[0] != "d00000" {
		t.Errorf("%d listed (first %q), more %v; want %d and more", len(got), got[0], more, MaxImplicit)
	}
}
