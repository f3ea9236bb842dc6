package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// workload runs against an image's root directory and returns an amount of
// work done (bytes for throughput workloads, operations for IOPS, 0 when
// only the time matters).
type workload struct {
	Name string
	Desc string
	Unit string // "MB/s" or "IOPS" when Amount is meaningful
	// Chroot is the command run inside the image, for chroot workloads.
	Chroot []string
	Run    func(ctx context.Context, root string, img imageSpec) (float64, error)
}

var workloads = []workload{
	{Name: "mount", Desc: "time until the image's tree is usable (pull + unpack for fullpull)", Run: nothing},
	{Name: "true", Desc: "chroot ROOT /bin/true", Chroot: []string{"/bin/true"}},
	{Name: "goversion", Desc: "chroot ROOT env GOROOT=/usr/local/go /usr/local/go/bin/go version",
		Chroot: []string{"/usr/bin/env", "GOROOT=/usr/local/go", "/usr/local/go/bin/go", "version"}},
	{Name: "python", Desc: "chroot ROOT python3 -c 'import json, asyncio'",
		Chroot: []string{"/usr/bin/python3", "-c", "import json, asyncio"}},
	{Name: "cat", Desc: "cat of one small file", Run: catProbe},
	{Name: "find", Desc: "find ROOT -type f | wc -l", Run: shell(`find "$ROOT" -type f | wc -l`)},
	{Name: "tar", Desc: "tar -C ROOT -cf - . | wc -c (read every file)", Run: shell(`tar -C "$ROOT" -cf - . | wc -c`)},
	{Name: "seqread", Desc: "sequential read of the 1 GiB file, 1 MiB reads", Unit: "MB/s", Run: seqRead},
	{Name: "randread", Desc: "4 KiB random reads of the 1 GiB file, one thread, ≤2000 reads or 20 s", Unit: "IOPS", Run: randRead},
}

func workloadByName(n string) (workload, bool) {
	i := slices.IndexFunc(workloads, func(w workload) bool { return w.Name == n })
	if i < 0 {
		return workload{}, false
	}
	return workloads[i], true
}

func nothing(context.Context, string, imageSpec) (float64, error) { return 0, nil }

// init gives chroot workloads their Run: a workload cannot refer to its
// own Chroot in its initializer.
func init() {
	for i := range workloads {
		if args := workloads[i].Chroot; len(args) > 0 {
			workloads[i].Run = func(ctx context.Context, root string, _ imageSpec) (float64, error) {
				return 0, run(ctx, "chroot", append([]string{root}, args...)...)
			}
		}
	}
}

func shell(script string) func(context.Context, string, imageSpec) (float64, error) {
	return func(ctx context.Context, root string, _ imageSpec) (float64, error) {
		cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-ec", script)
		cmd.Env = append(os.Environ(), "ROOT="+root)
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("%s: %w\n%s", script, err, out)
		}
		return 0, nil
	}
}

func catProbe(ctx context.Context, root string, img imageSpec) (float64, error) {
	return 0, run(ctx, "cat", filepath.Join(root, img.Probe))
}

const bigFile = "data/big.bin"

func seqRead(ctx context.Context, root string, _ imageSpec) (float64, error) {
	f, err := os.Open(filepath.Join(root, bigFile))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.Discard, readerOnly{f}, buf)
	return float64(n), err
}

// readerOnly hides WriterTo so CopyBuffer really does 1 MiB reads.
type readerOnly struct{ io.Reader }

// randRead does 4 KiB reads at random 4 KiB-aligned offsets (same seed each
// run, so every system reads the same blocks) and returns how many it did;
// it is bounded by count and time so a slow system cannot stall the run.
func randRead(ctx context.Context, root string, _ imageSpec) (float64, error) {
	f, err := os.Open(filepath.Join(root, bigFile))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	blocks := fi.Size() / 4096
	if blocks == 0 {
		return 0, errors.New("file too small")
	}
	rng := rand.New(rand.NewPCG(7, 7))
	buf := make([]byte, 4096)
	deadline := time.Now().Add(20 * time.Second)
	ops := 0
	for ; ops < 2000 && time.Now().Before(deadline); ops++ {
		if ctx.Err() != nil {
			return float64(ops), ctx.Err()
		}
		if _, err := f.ReadAt(buf, rng.Int64N(blocks)*4096); err != nil && !errors.Is(err, io.EOF) {
			return float64(ops), err
		}
	}
	return float64(ops), nil
}

// dropCaches writes back dirty pages and drops the page, dentry and inode
// caches, so the next read goes to the filesystem (FUSE or disk).
func dropCaches() error {
	exec.Command("sync").Run()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}
