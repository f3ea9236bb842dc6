package fs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
)

// blobOf writes b to a file and opens it as a layer blob.
func blobOf(t *testing.T, b []byte) (*localBlob, remote.Layer) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := openLocalBlob(f, int64(len(b)), int64(len(b)), digest.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	return lb, remote.Layer{Digest: digest.FromBytes(b), Size: int64(len(b))}
}

func TestUnpackInto(t *testing.T) {
	payload := bytes.Repeat([]byte("a tar would be here; "), 50_000)
	want := digest.FromBytes(payload)
	var gz, zs bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(payload[:len(payload)/2])
	zw.Close()
	zw = gzip.NewWriter(&gz) // a second member
	zw.Write(payload[len(payload)/2:])
	zw.Close()
	ze, _ := zstd.NewWriter(&zs)
	ze.Write(payload)
	ze.Close()
	for name, tc := range map[string]struct {
		blob   []byte
		format index.Format
	}{
		"gzip, two members":             {gz.Bytes(), index.FormatGzip},
		"zstd":                          {zs.Bytes(), index.FormatZstd},
		"zstd, a skippable frame first": {append([]byte{0x5e, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 'h', 'i'}, zs.Bytes()...), index.FormatZstd},
	} {
		t.Run(name, func(t *testing.T) {
			lb, l := blobOf(t, tc.blob)
			var out bytes.Buffer
			d, n, f, err := unpackInto(t.Context(), &out, t.TempDir(), lb, l)
			if err != nil {
				t.Fatal(err)
			}
			if d != want || n != int64(len(payload)) || f != tc.format || !bytes.Equal(out.Bytes(), payload) {
				t.Errorf("got %s, %d bytes, %s; want %s, %d, %s", d, n, f, want, len(payload), tc.format)
			}
		})
	}
	t.Run("digest mismatch", func(t *testing.T) {
		lb, l := blobOf(t, gz.Bytes())
		l.Digest = digest.NewDigestFromBytes(digest.SHA256, sha256.New().Sum(nil))
		if _, _, _, err := unpackInto(t.Context(), &bytes.Buffer{}, t.TempDir(), lb, l); !errors.Is(err, remote.ErrDigestMismatch) {
			t.Errorf("err = %v, want ErrDigestMismatch", err)
		}
	})
	// A bomb under a digest it does not have writes nothing: the blob is
	// checked before a byte is decompressed.
	t.Run("digest mismatch, nothing written", func(t *testing.T) {
		var bomb bytes.Buffer
		ze, _ := zstd.NewWriter(&bomb)
		ze.Write(make([]byte, 64<<20))
		ze.Close()
		lb, l := blobOf(t, bomb.Bytes())
		l.Digest = digest.FromString("another layer")
		w := &countingWriter{}
		if _, _, _, err := unpackInto(t.Context(), w, t.TempDir(), lb, l); !errors.Is(err, remote.ErrDigestMismatch) {
			t.Errorf("err = %v, want ErrDigestMismatch", err)
		}
		if w.n != 0 {
			t.Errorf("%d bytes decompressed from a blob that is not the layer", w.n)
		}
	})
	t.Run("neither gzip nor zstd", func(t *testing.T) {
		lb, l := blobOf(t, []byte("PK\x03\x04 a zip is no layer"))
		if _, _, _, err := unpackInto(t.Context(), &bytes.Buffer{}, t.TempDir(), lb, l); !errors.Is(err, ErrNotLazy) {
			t.Errorf("err = %v, want ErrNotLazy", err)
		}
	})
	// An empty blob (under a gzip media type, say) is an empty layer, as
	// umoci and buildah take it; one of 1 to 3 bytes is no layer.
	t.Run("empty", func(t *testing.T) {
		lb, l := blobOf(t, nil)
		var out bytes.Buffer
		d, n, f, err := unpackInto(t.Context(), &out, t.TempDir(), lb, l)
		if err != nil || d != digest.FromBytes(nil) || n != 0 || f != index.FormatTar || out.Len() != 0 {
			t.Errorf("got %s, %d bytes, %s, %v; want an empty tar", d, n, f, err)
		}
	})
	t.Run("three bytes", func(t *testing.T) {
		lb, l := blobOf(t, []byte{0x1f, 0x8b, 8})
		if _, _, _, err := unpackInto(t.Context(), &bytes.Buffer{}, t.TempDir(), lb, l); !errors.Is(err, ErrNotLazy) {
			t.Errorf("err = %v, want ErrNotLazy", err)
		}
	})
	t.Run("corrupt gzip", func(t *testing.T) {
		bad := bytes.Clone(gz.Bytes())
		bad[len(bad)/2] ^= 0xff
		lb, l := blobOf(t, bad)
		if _, _, _, err := unpackInto(t.Context(), &bytes.Buffer{}, t.TempDir(), lb, l); err == nil {
			t.Error("a corrupt gzip layer unpacked without error")
		}
	})
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
