package inflate

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"go/build"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// gunzip decodes data with compress/gzip, the reference.
func gunzip(data []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// decodeAll decodes data with NewReader and returns its output and
// checkpoints.
func decodeAll(data []byte, every int64) ([]byte, []Checkpoint, error) {
	var cps []Checkpoint
	zr, err := NewReader(bytes.NewReader(data), every, func(cp Checkpoint) error {
		cps = append(cps, cp)
		return nil
	})
	if err != nil {
		return nil, cps, err
	}
	out, err := io.ReadAll(zr)
	return out, cps, err
}

// checkSame fails unless NewReader decodes data to what compress/gzip
// does, and returns the output and checkpoints.
func checkSame(t *testing.T, data []byte, every int64) ([]byte, []Checkpoint) {
	t.Helper()
	want, err := gunzip(data)
	if err != nil {
		t.Fatalf("compress/gzip: %v", err)
	}
	got, cps, err := decodeAll(data, every)
	if err != nil {
		t.Fatalf("decode: %v (after %d of %d bytes)", err, len(got), len(want))
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("output differs from compress/gzip's at byte %d (lengths %d, %d)", i, len(got), len(want))
	}
	if len(cps) == 0 || cps[0].Out != 0 || cps[0].In != 0 || !cps[0].AtMember {
		t.Fatalf("first checkpoint %+v, want one at the start", cps[:min(1, len(cps))])
	}
	return got, cps
}

// firstDiff returns the first index where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// gzipLevel compresses data at a compress/gzip level.
func gzipLevel(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// randomBytes returns n incompressible bytes.
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	_, _ = r.Read(b)
	return b
}

// textBytes returns n bytes of text-like data: words of a small
// vocabulary, with numbers and punctuation, compressible about 3:1 to 4:1.
func textBytes(n int, seed uint64) []byte {
	words := strings.Fields(`the of and to in is that for it as was with be by on not he this
		are or his from at which but have an they you were her she there been one all we their
		func return if else struct interface package import byte int64 error nil range for go`)
	r := rand.New(rand.NewPCG(seed, 7))
	var b bytes.Buffer
	for b.Len() < n {
		switch r.IntN(20) {
		case 0:
			b.WriteString(".\n")
		case 1:
			b.WriteString(", ")
		case 2:
			b.WriteString(strings.Repeat(" ", r.IntN(8)))
		case 3:
			b.WriteByte(byte('0' + r.IntN(10)))
		default:
			b.WriteString(words[int(r.ExpFloat64()*8)%len(words)])
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

// tarDir returns a tar of the directory tree at dir, stopping once it
// holds limit bytes (limit <= 0: no limit).
func tarDir(t testing.TB, dir string, limit int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	errFull := errors.New("full")
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if limit > 0 && buf.Len() >= limit {
			return errFull
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil && err != errFull {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// goSrc is a directory of GOROOT/src.
func goSrc(t testing.TB, rel string) string {
	t.Helper()
	dir := filepath.Join(build.Default.GOROOT, "src", rel)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("no Go source tree: %v", err)
	}
	return dir
}

// decodeKeeping decodes data with NewReader, keeping its boundaries
// (KeepBoundaries(reach)) and reading bufSize bytes at a time; after each
// read it takes the kept boundary before the output less lag (at most
// max of them), checks that it lies in the range asked for and is valid,
// and returns the output and the boundaries taken.
func decodeKeeping(t *testing.T, data []byte, reach int64, bufSize, lag, max int) ([]byte, []Checkpoint) {
	t.Helper()
	zr, err := NewReader(bytes.NewReader(data), 1<<40, func(Checkpoint) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	zr.KeepBoundaries(reach)
	var taken []Checkpoint
	var out []byte
	buf := make([]byte, bufSize)
	last := int64(-1)
	for {
		n, err := zr.Read(buf)
		out = append(out, buf[:n]...)
		if at := int64(len(out) - lag); len(taken) < max {
			if cp, ok := zr.CheckpointBefore(last, at); ok {
				if cp.Out <= last || cp.Out > at {
					t.Fatalf("asked for a boundary in (%d, %d], got one at %d", last, at, cp.Out)
				}
				if err := cp.Validate(); err != nil {
					t.Fatal(err)
				}
				taken, last = append(taken, cp), cp.Out
			}
		}
		if err == io.EOF {
			return out, taken
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
