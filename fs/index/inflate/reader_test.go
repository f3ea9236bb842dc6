package inflate

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLevels decodes what compress/gzip writes at every level, text and
// random data, with stored, fixed and dynamic Huffman blocks.
func TestLevels(t *testing.T) {
	inputs := []struct {
		name string
		data []byte
	}{
		{"text", textBytes(256<<10, 1)},
		{"random", randomBytes(200<<10, 2)},
		{"short", []byte("hello, hello, hello")},
		{"byte", []byte{'x'}},
		{"run", bytes.Repeat([]byte{'a'}, 100000)},
		{"empty", nil},
	}
	for _, in := range inputs {
		for level := gzip.HuffmanOnly; level <= gzip.BestCompression; level++ {
			t.Run(fmt.Sprintf("%s/%d", in.name, level), func(t *testing.T) {
				checkSame(t, gzipLevel(t, in.data, level), 64<<10)
			})
		}
	}
}

// TestRandomSizes decodes incompressible data, which compress/gzip writes
// as stored blocks, of sizes around the stored block limit and up to
// 64 MiB (1 GiB with INFLATE_BIG=1, as TestBig).
func TestRandomSizes(t *testing.T) {
	sizes := []int{1, 100, 65535, 65536, 65537, 1 << 20, 8 << 20, 64 << 20}
	if testing.Short() {
		sizes = sizes[:len(sizes)-1]
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			level := gzip.BestSpeed // tries to compress, and stores
			if n >= 8<<20 {
				level = gzip.NoCompression // as fast as the test can make it
			}
			data := gzipLevel(t, randomBytes(n, uint64(n)), level)
			out, cps := checkSame(t, data, 4<<20)
			if n >= 8<<20 {
				checkResume(t, data, out, cps[len(cps)-2:])
			}
		})
	}
}

// TestBig decodes 1 GiB of random data through a file, and resumes from a
// few of its checkpoints. It runs only with INFLATE_BIG=1.
func TestBig(t *testing.T) {
	if os.Getenv("INFLATE_BIG") != "1" {
		t.Skip("set INFLATE_BIG=1 to decode 1 GiB")
	}
	const size = 1 << 30
	source := func() io.Reader { return io.LimitReader(rand.NewChaCha8([32]byte{9}), size) }
	f, err := os.Create(filepath.Join(t.TempDir(), "big.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	want := sha256.New()
	if _, err := io.Copy(zw, io.TeeReader(source(), want)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	var cps []Checkpoint
	zr, err := NewReader(io.NewSectionReader(f, 0, 1<<62), 64<<20, func(cp Checkpoint) error {
		cps = append(cps, cp)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	if n, err := io.Copy(got, zr); err != nil || n != size {
		t.Fatalf("decoded %d bytes: %v", n, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("output differs from the input")
	}
	for _, cp := range []Checkpoint{cps[1], cps[len(cps)/2], cps[len(cps)-1]} {
		zr, err := Resume(io.NewSectionReader(f, cp.In, 1<<62), cp)
		if err != nil {
			t.Fatal(err)
		}
		tail := sha256.New()
		if _, err := io.Copy(tail, zr); err != nil {
			t.Fatal(err)
		}
		ref := sha256.New()
		src := source()
		if _, err := io.CopyN(io.Discard, src, cp.Out); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(ref, src); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tail.Sum(nil), ref.Sum(nil)) {
			t.Fatalf("resumed at %d: output differs", cp.Out)
		}
	}
}

// gzipMembers concatenates one gzip member per input, at levels taken in
// turn.
func gzipMembers(t *testing.T, inputs ...[]byte) []byte {
	var all []byte
	levels := []int{gzip.DefaultCompression, gzip.NoCompression, gzip.BestSpeed, gzip.HuffmanOnly}
	for i, in := range inputs {
		all = append(all, gzipLevel(t, in, levels[i%len(levels)])...)
	}
	return all
}

// TestMembers decodes streams of several members, empty ones among them,
// and resumes from each block boundary and member start.
func TestMembers(t *testing.T) {
	text := textBytes(300<<10, 4)
	streams := map[string][]byte{
		"two":          gzipMembers(t, text[:100<<10], text[100<<10:]),
		"empty-first":  gzipMembers(t, nil, text),
		"empty-middle": gzipMembers(t, text[:5000], nil, nil, text[5000:]),
		"empty-last":   gzipMembers(t, text, nil),
		"only-empty":   gzipMembers(t, nil, nil, nil),
		"many-small":   gzipMembers(t, text[:10], text[10:20], text[20:100], text[100:40000], randomBytes(70000, 5)),
	}
	for name, data := range streams {
		t.Run(name, func(t *testing.T) {
			out, cps := checkSame(t, data, 0)
			members := 0
			for _, cp := range cps {
				if cp.AtMember {
					members++
				}
			}
			if members < 2 {
				t.Errorf("%d checkpoints at member starts, want one per member", members)
			}
			checkResume(t, data, out, cps)
		})
	}
}

// TestEmpty is compress/gzip's behaviour on a stream of no member: io.EOF
// from NewReader.
func TestEmpty(t *testing.T) {
	_, gzErr := gzip.NewReader(bytes.NewReader(nil))
	zr, err := NewReader(bytes.NewReader(nil), 0, nil)
	if err != io.EOF || gzErr != io.EOF || zr != nil {
		t.Fatalf("NewReader of nothing: %v, %v; compress/gzip: %v", zr, err, gzErr)
	}
}

// gzipWithHeader wraps the raw DEFLATE of data in a member whose header
// has the given flags and fields, and a header CRC when hcrc is true.
func gzipWithHeader(t *testing.T, data []byte, flags byte, extra []byte, name, comment string, hcrc bool) []byte {
	t.Helper()
	hdr := []byte{0x1f, 0x8b, 8, flags, 1, 2, 3, 4, 0, 255}
	if flags&flagExtra != 0 {
		hdr = append(hdr, byte(len(extra)), byte(len(extra)>>8))
		hdr = append(hdr, extra...)
	}
	if flags&flagName != 0 {
		hdr = append(append(hdr, name...), 0)
	}
	if flags&flagComment != 0 {
		hdr = append(append(hdr, comment...), 0)
	}
	if hcrc {
		hdr[3] |= flagHCRC
		c := crc32.ChecksumIEEE(hdr)
		hdr = append(hdr, byte(c), byte(c>>8))
	}
	// The raw DEFLATE and trailer of a member compress/gzip writes with
	// an empty header (10 bytes).
	member := gzipLevel(t, data, gzip.DefaultCompression)
	return append(hdr, member[10:]...)
}

// TestHeaders decodes members whose headers have every optional field.
func TestHeaders(t *testing.T) {
	data := textBytes(50000, 6)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Name, zw.Comment, zw.Extra = "name.txt", "a comment", []byte("extra field data")
	_, _ = zw.Write(data)
	_ = zw.Close()
	checkSame(t, buf.Bytes(), 0)

	all := byte(flagExtra | flagName | flagComment)
	for _, hcrc := range []bool{false, true} {
		for flags := byte(0); flags <= all; flags += flagExtra {
			checkSame(t, gzipWithHeader(t, data, flags, []byte("xy"), "file", "comment", hcrc), 0)
		}
	}
	// Reserved flags are ignored, as compress/gzip does.
	checkSame(t, gzipWithHeader(t, data, 0xe0, nil, "", "", false), 0)
	// An empty extra field.
	checkSame(t, gzipWithHeader(t, data, flagExtra, nil, "", "", true), 0)

	// A name longer than compress/gzip takes (it refuses 512 bytes or
	// more; gzip(1) takes any).
	long := gzipWithHeader(t, data, flagName, nil, strings.Repeat("n", 2000), "", true)
	if got, _, err := decodeAll(long, 0); err != nil || !bytes.Equal(got, data) {
		t.Errorf("long name: %v", err)
	}

	// A header CRC that does not match.
	bad := gzipWithHeader(t, data, flagName, nil, "file", "", true)
	bad[len("file")+11]++
	if _, err := NewReader(bytes.NewReader(bad), 0, nil); !errors.Is(err, ErrHeader) {
		t.Errorf("bad header CRC: %v, want ErrHeader", err)
	}
}

// TestTarGz decodes a real layer, a tar of GOROOT/src/net, and resumes
// from its checkpoints.
func TestTarGz(t *testing.T) {
	tarball := tarDir(t, goSrc(t, "net"), 0)
	data := gzipLevel(t, tarball, gzip.DefaultCompression)
	out, cps := checkSame(t, data, 1<<20)
	if !bytes.Equal(out, tarball) {
		t.Fatal("output differs from the tar")
	}
	t.Logf("%d bytes of tar, %d gzipped, %d checkpoints", len(tarball), len(data), len(cps))
	checkResume(t, data, out, cps)
}

// TestKlauspost decodes what klauspost/compress writes at each of its
// levels (testdata, made by gen_klauspost.go).
func TestKlauspost(t *testing.T) {
	files, err := filepath.Glob("testdata/klauspost-*.gz")
	if err != nil || len(files) < 10 {
		t.Fatalf("testdata: %d files, %v (run go run gen_klauspost.go)", len(files), err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			out, cps := checkSame(t, data, 0)
			checkResume(t, data, out, cps)
		})
	}
}

// TestGzipCommand decodes what gzip(1) (zlib's deflate) writes, when it
// is installed.
func TestGzipCommand(t *testing.T) {
	path, err := exec.LookPath("gzip")
	if err != nil {
		t.Skip("no gzip command")
	}
	input := append(textBytes(300<<10, 8), randomBytes(70<<10, 8)...)
	for _, level := range []string{"-1", "-6", "-9"} {
		cmd := exec.Command(path, "-c", "-n", level)
		cmd.Stdin = bytes.NewReader(input)
		data, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		out, cps := checkSame(t, data, 0)
		checkResume(t, data, out, cps)
	}
}

// TestCheckpointSpacing checks that checkpoints come at the first boundary
// after every bytes of output, and carry what Resume needs: the window
// bytes the output after them refers to.
func TestCheckpointSpacing(t *testing.T) {
	text := textBytes(2<<20, 10)
	data := gzipLevel(t, text, gzip.BestSpeed)
	const every = 256 << 10
	_, all := checkSame(t, data, 0)
	_, cps := checkSame(t, data, every)
	if len(cps) < 6 {
		t.Fatalf("%d checkpoints in 2 MiB at 256 KiB", len(cps))
	}
	j := 0
	for i, cp := range cps {
		for all[j].Out != cp.Out || all[j].In != cp.In {
			j++ // the checkpoint is one of the block boundaries
		}
		if i > 0 && (cp.Out-cps[i-1].Out < every || all[j-1].Out-cps[i-1].Out >= every) {
			t.Errorf("checkpoint %d at %d, previous at %d: not the first boundary %d bytes after it", i, cp.Out, cps[i-1].Out, every)
		}
		if err := cp.Validate(); err != nil {
			t.Error(err)
		}
		// The window is the output before it, but for the bytes no
		// reference reaches, which are zero; some are, some are not.
		before := text[max(0, cp.Out-windowSize):cp.Out]
		kept := 0
		for k, b := range cp.Window {
			switch {
			case b == before[k]:
				kept++
			case b != 0:
				t.Fatalf("checkpoint %d: window byte %d is %#x, neither the output before it nor 0", i, k, b)
			}
		}
		if i > 0 && (kept == len(before) || kept < len(before)/20) {
			t.Errorf("checkpoint %d: %d of the %d window bytes kept", i, kept, len(before))
		}
		if cp.CRC != crc32.ChecksumIEEE(text[:cp.Out]) || cp.MemberOut != cp.Out && i > 0 {
			t.Errorf("checkpoint %d: CRC or member output wrong", i)
		}
	}
}

// TestCheckpointError is a callback's error, returned by Read.
func TestCheckpointError(t *testing.T) {
	data := gzipLevel(t, textBytes(256<<10, 11), gzip.BestSpeed)
	stop := errors.New("stop")
	n := 0
	zr, err := NewReader(bytes.NewReader(data), 0, func(cp Checkpoint) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(zr); !errors.Is(err, stop) {
		t.Fatalf("ReadAll: %v, want the callback's error", err)
	}
}
