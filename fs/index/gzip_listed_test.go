package index

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// wordsFixture is a layer of many text files of 8 to 48 KiB (random words:
// DEFLATE blocks of some KiB, a few files per span), and the names of
// every seventh, as a prefetch list would name them.
func wordsFixture() ([]tarEntry, map[string]bool) {
	r := rand.New(rand.NewPCG(7, 11))
	words := make([]string, 2000)
	for i := range words {
		words[i] = randomName(r, 3+r.IntN(8))
	}
	entries := tarFixture()
	listed := map[string]bool{}
	for i := range 150 {
		var b bytes.Buffer
		for n := 8<<10 + r.IntN(40<<10); b.Len() < n; {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(" \n"[r.IntN(2)])
		}
		name := fmt.Sprintf("lib/mod%03d/file.py", i)
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: fixtureTime}, body: b.Bytes()})
		if i%7 == 3 {
			listed[name] = true
		}
	}
	return entries, listed
}

// cpBefore is the Out of the last checkpoint at or before tar offset at.
func cpBefore(cps []Checkpoint, at int64) int64 {
	i, found := slices.BinarySearchFunc(cps, at, func(cp Checkpoint, off int64) int { return cmp.Compare(cp.Out, off) })
	if found {
		return at
	}
	return cps[i-1].Out
}

// TestReadGzipListed: WithListed puts a checkpoint close before each
// listed file that starts far into a span, so that reading it fetches
// less; every file still reads back as it is in the tar.
func TestReadGzipListed(t *testing.T) {
	entries, listed := wordsFixture()
	tarBlob := writeTar(t, entries)
	for _, tc := range gzipForms(t, tarBlob, 2<<20+3) {
		t.Run(tc.name, func(t *testing.T) {
			plain, err := Read(context.Background(), bytes.NewReader(tc.blob), gzipDesc(tc.blob), WithGzip())
			if err != nil {
				t.Fatal(err)
			}
			var asked []string
			idx, err := Read(context.Background(), bytes.NewReader(tc.blob), gzipDesc(tc.blob), WithGzip(),
				WithListed(func(name string) bool { asked = append(asked, name); return listed[name] }))
			if err != nil {
				t.Fatal(err)
			}
			checkGzipChunks(t, idx, int64(len(tc.blob)))
			checkAgainstTar(t, idx, tc.blob, entries)
			var files []string
			for _, e := range entries {
				if e.hdr.Typeflag == tar.TypeReg && len(e.body) > 0 {
					files = append(files, e.hdr.Name)
				}
			}
			if !slices.Equal(asked, files) {
				t.Errorf("listed was asked about %q, want the files with data, %q", asked, files)
			}
			closer, far := 0, 0
			for name := range listed {
				e := lookupPath(idx, name)
				pe := lookupPath(plain, name)
				first, pfirst := idx.Chunks[e.Ino][0], plain.Chunks[pe.Ino][0]
				at := int64(-1)
				for _, cp := range idx.Checkpoints {
					if cp.In == first.BlobOffset {
						at = cp.Out + first.Inner
					}
				}
				got, was := at-cpBefore(idx.Checkpoints, at), at-cpBefore(plain.Checkpoints, at)
				if got > was {
					t.Errorf("%s: %d bytes of the tar past its checkpoint, more than %d without the list", name, got, was)
				}
				if was > gzipMarkGap {
					far++
					if got < was {
						closer++
					}
					if got < was && first.BlobLength >= pfirst.BlobLength {
						t.Errorf("%s: its first chunk fetches %d bytes, no fewer than the %d without the list", name, first.BlobLength, pfirst.BlobLength)
					}
				}
			}
			// A DEFLATE block may run past a file's start: then there is
			// no boundary to take (stored blocks are 64 KiB, text blocks
			// a few KiB to some dozens).
			if far == 0 || closer < far*2/3 {
				t.Errorf("%d of %d listed files far into a span got a checkpoint closer before them", closer, far)
			}
			if extra := len(idx.Checkpoints) - len(plain.Checkpoints); extra > len(listed) {
				t.Errorf("%d more checkpoints than without the list, for %d listed files", extra, len(listed))
			}
			t.Logf("%d listed, %d far into a span, %d got closer; %d checkpoints, %d without the list",
				len(listed), far, closer, len(idx.Checkpoints), len(plain.Checkpoints))
		})
	}
}

// FuzzReadGzipListed indexes any tar, gzipped with a block boundary every
// few hundred bytes (a flush) so that small inputs have boundaries to take,
// with every other name listed and no gap asked for: a checkpoint falls
// before most listed files and cuts the chunks waiting before them. The
// index validates, and every file reads back as the tar holds it.
func FuzzReadGzipListed(f *testing.F) {
	var small []tarEntry
	for _, e := range fixtureEntries() {
		if len(e.body) <= 512 {
			small = append(small, e)
		}
	}
	f.Add(writeTar(f, small[:24]), uint16(300))
	f.Add(writeTar(f, small), uint16(1))
	f.Add(make([]byte, 1024), uint16(100))
	f.Fuzz(runListedFuzz)
}

func runListedFuzz(t *testing.T, tarBlob []byte, every uint16) {
	if len(tarBlob) > 256<<10 {
		return // a tiny block every few bytes of that much is slow to decode, not more interesting
	}
	{
		var buf bytes.Buffer
		zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		if err != nil {
			t.Fatal(err)
		}
		for rest := tarBlob; len(rest) > 0; {
			n := min(len(rest), int(every%2048)+16)
			_, _ = zw.Write(rest[:n])
			_ = zw.Flush()
			rest = rest[n:]
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		blob := buf.Bytes()
		d := gzipDesc(blob)
		idx, err := readGzip(context.Background(), bytes.NewReader(blob), d.Size, d.Digest, defaultLimits,
			readOptions{listed: func(name string) bool { return len(name)%2 == 0 }, markGap: 1})
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotLazy) {
				t.Fatalf("error is neither ErrInvalid nor ErrNotLazy: %v", err)
			}
			return
		}
		checkGzipChunks(t, idx, int64(len(blob)))
		for name, body := range lastRegular(tarBlob) {
			if e := lookupPath(idx, name); e != nil && e.Type == TypeReg && e.Size > 0 && e.Size == int64(len(body)) {
				if got := fileContent(t, idx, blob, e.Ino); !bytes.Equal(got, body) {
					t.Fatalf("%s: the index serves other bytes than the tar holds", name)
				}
			}
		}
	}
}
