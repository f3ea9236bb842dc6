package index

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// bench50k is an eStargz layer of 50,000 small files, built once per test
// binary by the real estargz writer: the shape of the mount-time target
// (a TOC of about 2.6 MB compressed that needs two reads).
var bench50k = sync.OnceValues(func() ([]byte, digest.Digest) {
	const dirs, perDir = 500, 100
	var entries []tarEntry
	for d := range dirs {
		dir := fmt.Sprintf("usr/lib/python3.12/site-packages/pkg%03d/", d)
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: fixtureTime}})
		for f := range perDir {
			name := fmt.Sprintf("%smodule_%03d.py", dir, f)
			body := randomBytes(uint64(d*perDir+f), 64+f%256)
			entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: fixtureTime}, body: body})
		}
	}
	tb := &testing.B{} // buildEStargz only reports failures through it
	return buildEStargz(tb, writeTar(tb, entries))
})

// BenchmarkReadEStargz50k is ReadEStargz (which ends with Validate) on the
// 50,000-file layer, read from memory with the TOC digest annotation set,
// as fs does for a mount.
func BenchmarkReadEStargz50k(b *testing.B) {
	blob, tocDigest := bench50k()
	r := bytes.NewReader(blob)
	ctx := context.Background()
	b.ReportAllocs()
	cpu := startCPUClock(b)
	for b.Loop() {
		idx, err := ReadEStargz(ctx, r, int64(len(blob)), tocDigest)
		if err != nil {
			b.Fatal(err)
		}
		if n := len(idx.Entries); n != 50000+500+4+1 {
			b.Fatalf("%d entries", n)
		}
	}
	cpu.report()
}

// cpuClock reports the process's CPU time per op (user and system, GC
// workers included) as cpu-ns/op: on a shared machine it varies far less
// than wall time, and it counts the GC work a benchmark leaves behind.
type cpuClock struct {
	b     *testing.B
	start time.Duration
}

func startCPUClock(b *testing.B) cpuClock {
	runtime.GC()
	return cpuClock{b, processCPU(b)}
}

func (c cpuClock) report() {
	c.b.ReportMetric(float64(processCPU(c.b)-c.start)/float64(c.b.N), "cpu-ns/op")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
