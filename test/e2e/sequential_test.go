package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stratafs/strata/test/fixture"
)

// TestSequentialWalkCoalesces reads every file of a layer in its stored
// order, as tar or cp -r do: the blob-order read-ahead must turn thousands
// of small reads into few large requests, with every byte still right.
func TestSequentialWalkCoalesces(t *testing.T) {
	requireRoot(t)
	const files = 2000
	spec := fixture.LayerSpec{fixture.Dir("many")}
	for i := 0; i < files; i++ {
		spec = append(spec, fixture.Reg(fmt.Sprintf("many/f%05d", i), 4096+int64(i%7)*512, uint64(1000+i)))
	}
	reg := shared.reg
	ref := push(t, reg, "many", "estargz", []fixture.LayerSpec{spec}, fixture.FormEStargz)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, reg, p))
	p.ResetStats()

	for _, f := range spec[1:] {
		got, err := os.ReadFile(filepath.Join(dir, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := io.ReadAll(f.Reader())
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: wrong content", f.Path)
		}
	}
	st := p.Stats()
	t.Logf("%d files read with %d blob requests, %d bytes", files, st.BlobRequests, st.BlobBytes)
	if st.BlobRequests > files/20 {
		t.Errorf("%d blob requests for %d files read in blob order; read-ahead should make it under %d", st.BlobRequests, files, files/20)
	}
}

// TestBigFileReadTakesOnlyItself: reading one large file from start to end
// must not drag in the unrelated files stored after it.
func TestBigFileReadTakesOnlyItself(t *testing.T) {
	requireRoot(t)
	spec := fixture.LayerSpec{fixture.Dir("a"), fixture.Reg("a/big", 24<<20, 5), fixture.Dir("b")}
	for i := 0; i < 50; i++ {
		spec = append(spec, fixture.Reg(fmt.Sprintf("b/after%02d", i), 512<<10, uint64(600+i)))
	}
	reg := shared.reg
	ref := push(t, reg, "bigthenmany", "estargz", []fixture.LayerSpec{spec}, fixture.FormEStargz)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, reg, p))
	p.ResetStats()
	got, err := os.ReadFile(filepath.Join(dir, "a/big"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(spec[1].Reader())
	if !bytes.Equal(got, want) {
		t.Fatal("wrong content")
	}
	st := p.Stats()
	t.Logf("24 MiB file read with %d blob requests, %d bytes", st.BlobRequests, st.BlobBytes)
	// The content is incompressible: its compressed size is about 24 MiB.
	if limit := int64(24<<20) * 105 / 100; st.BlobBytes > limit {
		t.Errorf("reading one 24 MiB file moved %d bytes, more than %d: read-ahead fetched other files", st.BlobBytes, limit)
	}
}
