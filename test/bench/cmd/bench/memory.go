package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// The memory row (issue 18, item 3): one daemon with manyImages images of
// manyFiles small files each mounted, walked, then read whole; its VmRSS
// after the walk and its VmHWM after the reads are the measurements.
const (
	manyImages = 10
	manyFiles  = 20_000
	// memoryImage is the plan entry's image: the first of the row's.
	memoryImage = "many0"
	// memoryReaders is how many images are read whole at once.
	memoryReaders = 2
)

// manyName is the name of the row's image i.
func manyName(i int) string { return fmt.Sprintf("many%d", i) }

func init() {
	for i := range manyImages {
		seed := uint64(100 + i)
		images = append(images, imageSpec{Name: manyName(i), Probe: "data/d0/d0/f0", Layers: func(b *builder) ([]layerSrc, error) {
			d, err := b.generated(manyName(i), func(dir string) error { return writeManyFiles(dir, seed) })
			return []layerSrc{{Dir: d}}, err
		}})
	}
}

// writeManyFiles writes manyFiles files of 512 B–4 KiB, 50 a directory,
// hex text from a generator seeded with seed (so no two images share a
// chunk).
func writeManyFiles(dir string, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, 4<<10)
	const hex = "0123456789abcdef"
	for i := range manyFiles {
		leaf := i / 50
		d := filepath.Join(dir, "data", fmt.Sprintf("d%d/d%d", leaf/20, leaf%20))
		if i%50 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		n := 512 + rng.IntN(3584+1)
		for j := range n {
			buf[j] = hex[rng.IntN(16)]
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", i%50)), buf[:n], 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Workloads of the memory row's results.
const (
	memWalk    = "walk-all" // every image mounted, every entry stat'ed
	memReadAll = "read-all" // every file of every image read
)

// measureMemory runs the memory row once over profile: a fresh daemon
// mounts the row's images, a walk stats every entry of each (then VmRSS
// is taken), and every file of each is read, memoryReaders images at a
// time (then VmHWM is taken).
func (r *runner) measureMemory(ctx context.Context, profile string, runNo int) []result {
	sys := r.system("strata").(*strataSys)
	base := result{Profile: profile, Image: memoryImage, System: sys.Name(), State: "cold", Run: runNo}
	fail := func(wl string, err error) []result {
		r.log.Error("memory row failed", "workload", wl, "err", err)
		res := base
		res.Workload, res.Err = wl, err.Error()
		return []result{res}
	}
	var mounts []string
	defer func() {
		for _, m := range mounts {
			if isMountpoint(m) {
				_ = run(context.WithoutCancel(ctx), sys.bin, "umount", "--socket", sys.socket(), m)
			}
		}
		if err := sys.Teardown(context.WithoutCancel(ctx)); err != nil {
			r.log.Warn("teardown", "system", sys.Name(), "err", err)
		}
	}()
	if err := sys.Prepare(ctx); err != nil {
		return fail(memWalk, err)
	}
	if err := dropCaches(); err != nil {
		return fail(memWalk, err)
	}
	r.px.ResetStats()
	t0 := time.Now()
	for i := range manyImages {
		m := filepath.Join(sys.dir, "mnt", manyName(i))
		if err := os.MkdirAll(m, 0o755); err != nil {
			return fail(memWalk, err)
		}
		ref := r.px.Host() + "/" + manyName(i) + ":estargz"
		if err := run(ctx, sys.bin, "mount", "--socket", sys.socket(), "--insecure", ref, m); err != nil {
			return fail(memWalk, fmt.Errorf("%w\ndaemon log: %s", err, tailFile(filepath.Join(sys.dir, "daemon.log"))))
		}
		mounts = append(mounts, m)
	}
	for _, m := range mounts {
		// du stats every entry, as ls -lR would, and reads no file.
		if err := run(ctx, "du", "-s", m); err != nil {
			return fail(memWalk, err)
		}
	}
	walk := base
	walk.Workload, walk.Seconds = memWalk, time.Since(t0).Seconds()
	walk.RSS, walk.PeakRSS = daemonMemory(sys)
	st := r.px.Stats()
	walk.Bytes, walk.Requests = st.BytesOut, st.Requests
	r.log.Info("memory", "workload", memWalk, "s", fmt.Sprintf("%.2f", walk.Seconds), "RSS MB", walk.RSS>>20, "peak MB", walk.PeakRSS>>20)

	r.px.ResetStats()
	t0 = time.Now()
	if err := readTrees(ctx, mounts, memoryReaders); err != nil {
		return append([]result{walk}, fail(memReadAll, err)...)
	}
	read := base
	read.Workload, read.Seconds = memReadAll, time.Since(t0).Seconds()
	read.RSS, read.PeakRSS = daemonMemory(sys)
	st = r.px.Stats()
	read.Bytes, read.Requests = st.BytesOut, st.Requests
	r.log.Info("memory", "workload", memReadAll, "s", fmt.Sprintf("%.2f", read.Seconds), "RSS MB", read.RSS>>20, "peak MB", read.PeakRSS>>20)
	return []result{walk, read}
}

// readTrees reads every file under each of dirs with the `tar`
// workload, n trees at a time.
func readTrees(ctx context.Context, dirs []string, n int) error {
	tar, _ := workloadByName("tar")
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, d := range dirs {
		g.Go(func() error {
			_, err := tar.Run(ctx, d, imageSpec{})
			return err
		})
	}
	return g.Wait()
}

// memoryTargets are issue 18's memory bounds, from the row's results.
func memoryTargets(rs []result) []target {
	walk := target{What: fmt.Sprintf("daemon RSS ≤ 100 MB with %d images of %d small files mounted and walked (issue 18)", manyImages, manyFiles)}
	read := target{What: "daemon peak RSS (VmHWM) ≤ 200 MB while reading them whole (issue 18)"}
	var walks, reads []float64
	for _, r := range rs {
		if r.Image != memoryImage || r.Err != "" || r.RSS == 0 {
			continue
		}
		switch r.Workload {
		case memWalk:
			walks = append(walks, float64(r.RSS)/(1<<20))
		case memReadAll:
			reads = append(reads, float64(r.PeakRSS)/(1<<20))
		}
	}
	if len(walks) > 0 {
		m := slices.Max(walks)
		walk.Measured = fmt.Sprintf("%.0f MB at most (runs: %s)", m, mbList(walks))
		walk.Met = check(m <= 100)
	}
	if len(reads) > 0 {
		m := slices.Max(reads)
		read.Measured = fmt.Sprintf("%.0f MB at most (runs: %s)", m, mbList(reads))
		read.Met = check(m <= 200)
	}
	return []target{walk, read}
}

func mbList(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(s, ", ") + " MB"
}

// renderMemory writes the memory row's runs, when there are any.
func renderMemory(w io.Writer, res *runResults) {
	var rows []string
	for _, r := range res.Results {
		if r.Image != memoryImage || (r.Workload != memWalk && r.Workload != memReadAll) {
			continue
		}
		if r.Err != "" {
			rows = append(rows, fmt.Sprintf("| %d | %s | failed: %s | | |", r.Run, r.Workload, strings.ReplaceAll(firstLine(r.Err), "|", "/")))
			continue
		}
		rows = append(rows, fmt.Sprintf("| %d | %s | %.2f s · %.1f MB · %d req | %d MB | %d MB |", r.Run, r.Workload, r.Seconds,
			float64(r.Bytes)/1e6, r.Requests, r.RSS>>20, r.PeakRSS>>20))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "## Daemon memory (issue 18)\n\nOne daemon (fresh root, over `lo`) with %d images of %d small files each (%s…%s, 512 B–4 KiB of hex text, 50 a directory) mounted: "+
		"`%s` is the mounts and a `du -s` of each (every entry stat'ed, no file read), `%s` a `tar c` of each, %d at a time. "+
		"RSS is the daemon's VmRSS at the end of the step, peak its VmHWM since it started.\n\n", manyImages, manyFiles, manyName(0), manyName(manyImages-1), memWalk, memReadAll, memoryReaders)
	fmt.Fprint(w, "| run | step | time · bytes · requests | RSS | peak |\n|---|---|---|---:|---:|\n")
	fmt.Fprintln(w, strings.Join(rows, "\n"))
	fmt.Fprint(w, "\n")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
