package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// countingReaderAt is a real in-memory blob that records every ReadAt.
type countingReaderAt struct {
	r     io.ReaderAt
	mu    sync.Mutex
	reads [][2]int64 // offset, length
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads = append(c.reads, [2]int64{off, int64(len(p))})
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

// sparseReaderAt is a blob of size bytes that are zero except for tail,
// its last bytes: a huge blob that costs nothing to hold.
type sparseReaderAt struct {
	size int64
	tail []byte
}

func (s sparseReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	tailStart := s.size - int64(len(s.tail))
	n := 0
	for n < len(p) && off+int64(n) < s.size {
		pos := off + int64(n)
		if pos >= tailStart {
			n += copy(p[n:], s.tail[pos-tailStart:])
			continue
		}
		zeros := min(int64(len(p)-n), tailStart-pos)
		clear(p[n : n+int(zeros)])
		n += int(zeros)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// tocBlob writes an eStargz blob by hand: data (any bytes) followed by
// the TOC gzip stream holding tocJSON as stargz.index.json, and the
// footer. It lets tests feed the reader TOCs no writer would produce.
func tocBlob(t testing.TB, data, tocJSON []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.Write(data)
	tocOff := int64(buf.Len())
	writeGzipTar(t, &buf, estargz.TOCTarName, tocJSON)
	buf.Write(footer(tocOff))
	return buf.Bytes()
}

// writeGzipTar writes a gzip stream of a tar holding one file.
func writeGzipTar(t testing.TB, w io.Writer, name string, content []byte) {
	t.Helper()
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(content)), Mode: 0o644}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}

// footer is the 51-byte eStargz footer pointing at tocOff.
func footer(tocOff int64) []byte {
	sub := fmt.Sprintf("%016xSTARGZ", tocOff)
	extra := []byte{'S', 'G', 0, 0}
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(sub)))
	return estargz.CreateGzipFooter(append(extra, sub...))
}

// legacyFooter is the 47-byte footer of pre-eStargz stargz blobs.
func legacyFooter(tocOff int64) []byte {
	return estargz.CreateGzipFooter([]byte(fmt.Sprintf("%016xSTARGZ", tocOff)))
}

// jtocBlob marshals entries as a version 1 TOC and wraps it with tocBlob.
func jtocBlob(t testing.TB, data []byte, entries []*estargz.TOCEntry) []byte {
	t.Helper()
	js, err := json.Marshal(&estargz.JTOC{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return tocBlob(t, data, js)
}

// tarEntry is one entry of a source tar written by a test.
type tarEntry struct {
	hdr  tar.Header
	body []byte
}

func writeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// buildEStargz converts a tar to eStargz with the real estargz writer.
func buildEStargz(t testing.TB, tarBytes []byte, opts ...estargz.Option) ([]byte, digest.Digest) {
	t.Helper()
	opts = append([]estargz.Option{estargz.WithCompressionLevel(gzip.BestSpeed)}, opts...)
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarBytes), 0, int64(len(tarBytes))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	out, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	return out, blob.TOCDigest()
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randomName returns a reproducible name of n lowercase letters, which
// gzip cannot shrink much below n*4.7 bits.
func randomName(r *rand.Rand, n int) string {
	var sb strings.Builder
	for range n {
		sb.WriteByte(byte('a' + r.IntN(26)))
	}
	return sb.String()
}

// manyEntriesTOC returns a TOC of about n entries: directories of
// regular files with one chunk each (pointing into a data region of
// dataLen bytes) and symlinks, with random names so that it compresses
// poorly.
func manyEntriesTOC(n int, dataLen int64) []*estargz.TOCEntry {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	var entries []*estargz.TOCEntry
	var off int64
	for len(entries) < n {
		dir := randomName(r, 12)
		entries = append(entries, &estargz.TOCEntry{Name: dir + "/", Type: "dir", Mode: 0o755, ModTime3339: "2024-01-02T03:04:05Z"})
		for j := 0; j < 50 && len(entries) < n; j++ {
			name := dir + "/" + randomName(r, 20)
			if j%5 == 4 {
				entries = append(entries, &estargz.TOCEntry{Name: name, Type: "symlink", LinkName: "../" + randomName(r, 16)})
				continue
			}
			size := int64(1 + r.IntN(1<<16))
			entries = append(entries, &estargz.TOCEntry{
				Name: name, Type: "reg", Mode: 0o644, Size: size, UID: 1000, GID: 1000,
				ModTime3339: "2024-01-02T03:04:05Z", Offset: off % dataLen,
				ChunkDigest: digest.FromString(name).String(), Digest: digest.FromString(name + "/").String(),
			})
			off += 37
		}
	}
	return entries
}

// lookupPath walks idx from the root; it returns nil when a name is missing.
func lookupPath(idx *Index, p string) *Entry {
	ino := RootIno
	if p != "" {
		for _, name := range strings.Split(p, "/") {
			found := false
			for _, d := range idx.Children[ino] {
				if d.Name == name {
					ino, found = d.Ino, true
					break
				}
			}
			if !found {
				return nil
			}
		}
	}
	return &idx.Entries[ino-RootIno]
}

// fileContent decodes every chunk of a regular file from the blob.
func fileContent(t testing.TB, idx *Index, blob []byte, ino uint64) []byte {
	t.Helper()
	var out []byte
	for _, c := range idx.Chunks[ino] {
		var data []byte
		var err error
		if c.Encoding == EncodingDeflate {
			data, err = decodeOne(idx, c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength])
		} else {
			data, err = DecodeChunk(c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength], nil)
		}
		if err != nil {
			t.Fatalf("inode %d: %v", ino, err)
		}
		out = append(out, data...)
	}
	return out
}

// decodeOne decodes one chunk of a gzip layer from its span.
func decodeOne(idx *Index, c Chunk, span []byte) ([]byte, error) {
	cp, err := NewMemory(idx, 0).Checkpoint(c.BlobOffset)
	if err != nil {
		return nil, err
	}
	out, err := DecodeSpan(cp, span, []Chunk{c})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
