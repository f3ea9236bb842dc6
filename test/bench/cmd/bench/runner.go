package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stratafs/strata/test/proxy"
)

// result is one measurement.
type result struct {
	Profile, Image, Workload, System, State string
	Run                                     int
	// Seconds: cold = mount (or pull + unpack) + workload, i.e. time to
	// first result; warm and hot = the workload alone.
	Seconds      float64
	MountSeconds float64 `json:",omitempty"`
	// SharedMount marks a cold run on a mount (a full pull) that an
	// earlier workload's cold run already counted.
	SharedMount bool    `json:",omitempty"`
	Amount      float64 `json:",omitempty"` // bytes (seqread) or operations (randread)
	Bytes       int64   // response bytes through the proxy
	Requests    int64
	// BytesIn: request body bytes through the proxy (pushes).
	BytesIn int64 `json:",omitempty"`
	// Phases of a build step (build.go), in order.
	Phases []phase `json:",omitempty"`
	// Again: a build step's first command run once more after the step,
	// not part of Seconds: its cost with nothing left to fetch.
	Again float64 `json:",omitempty"`
	// DaemonCPU: CPU seconds Strata's daemon used from its start to the
	// end of a build step (build rows only).
	DaemonCPU float64 `json:",omitempty"`
	// RSS and PeakRSS: Strata's daemon's VmRSS at the end of the run and
	// its VmHWM since it started (issue 18), in bytes.
	RSS     int64  `json:",omitempty"`
	PeakRSS int64  `json:",omitempty"`
	Err     string `json:",omitempty"`
}

// imageSizes are compressed sizes from the manifests, for the bytes target.
type imageSizes struct {
	Gzip, Estargz int64
	TOC           int64 // eStargz TOCs and footers, all layers
}

type runResults struct {
	Quick bool
	// Rows is the kind of row run (--rows), "all" for the whole plan.
	Rows    string `json:",omitempty"`
	Elapsed float64
	Started time.Time
	Machine machineInfo
	Sizes   map[string]imageSizes
	Reads   map[string]readEstimate // image/workload → files it reads
	// Containerd is `ctr version` of the containerd comparison's daemon.
	Containerd string `json:",omitempty"`
	// GzipIndexing, by image, for the gzip rows (issue 14).
	GzipIndexing map[string]gzipIndexing `json:",omitempty"`
	Results      []result
}

type runner struct {
	o     options
	px    *proxy.Proxy
	log   *slog.Logger
	reads map[string]readEstimate
	// regHost is the registry, straight (not through the proxy).
	regHost string
	// ctdVersion is `ctr version` once a containerd entry has started one.
	ctdVersion string
	// trained lists the image/step pairs whose recorded prefetch list
	// this run has made (see trainRecorded).
	trained map[string]bool
}

func (r *runner) system(name string) system {
	dir := filepath.Join(r.o.work, "run", name)
	switch name {
	case "strata":
		return &strataSys{bin: r.o.strata, dir: dir}
	case strataRec:
		return &strataSys{bin: r.o.strata, dir: dir, recorded: true}
	case strataPlain:
		return &strataSys{bin: r.o.strata, dir: dir, plain: true}
	case strataPlainRec:
		return &strataSys{bin: r.o.strata, dir: dir, plain: true, recorded: true}
	case strataGzip:
		return &strataSys{bin: r.o.strata, dir: dir, gzip: true}
	case strataGzipRec:
		return &strataSys{bin: r.o.strata, dir: dir, gzip: true, recorded: true}
	case strataZstdChunked:
		return &strataSys{bin: r.o.strata, dir: dir, zstd: true}
	case strataGzipStream:
		return &strataSys{bin: r.o.strata, dir: dir, gzip: true, config: "layer_indexes = \"off\"\nprefetch_lists = \"off\"\n"}
	case "stargz":
		return &readySys{name: "stargz", tag: "estargz", bin: r.o.stargz, dir: dir}
	case sociName:
		return &readySys{name: sociName, tag: sociTag, bin: r.o.soci, dir: dir}
	default:
		return &fullPull{dir: dir}
	}
}

func (r *runner) runPlan(ctx context.Context, p plan, regHost string) (*runResults, error) {
	res := &runResults{Started: time.Now().UTC(), Machine: machine(ctx, r.o), Sizes: map[string]imageSizes{},
		Reads: map[string]readEstimate{}}
	r.reads, r.regHost = res.Reads, regHost
	for _, img := range p.images() {
		sz := manifestSizes(ctx, regHost, img)
		toc, err := tocBytes(ctx, regHost, img)
		if err != nil {
			r.log.Warn("TOC size", "image", img, "err", err)
		}
		sz.TOC = toc
		res.Sizes[img] = sz
	}
	for _, e := range p {
		if e.Gzip && res.GzipIndexing[e.Image].LayerBytes == 0 {
			spec, _ := imageByName(e.Image)
			g, err := r.measureGzipIndexing(ctx, spec)
			if err != nil {
				r.log.Warn("gzip indexing", "image", e.Image, "err", err)
			} else {
				if res.GzipIndexing == nil {
					res.GzipIndexing = map[string]gzipIndexing{}
				}
				res.GzipIndexing[e.Image] = g
			}
		}
		r.px.SetProfile(e.Profile)
		if e.Memory {
			for run := 1; run <= e.Runs && ctx.Err() == nil; run++ {
				res.Results = append(res.Results, r.measureMemory(ctx, e.Profile.Name, run)...)
			}
			continue
		}
		spec, _ := imageByName(e.Image)
		for run := 1; run <= e.Runs; run++ {
			for _, sname := range e.Systems {
				if run > e.runsOf(sname) {
					continue
				}
				// The full pull is the same for every workload: one pull
				// and unpack a run serves them all, each timed from the
				// drop of every cache as pull + unpack + workload.
				groups := [][]string{e.Workloads}
				if sname != "fullpull" {
					groups = nil
					for _, w := range e.Workloads {
						groups = append(groups, []string{w})
					}
				}
				for _, g := range groups {
					if ctx.Err() != nil {
						return res, ctx.Err()
					}
					var ws []workload
					for _, wname := range g {
						w, _ := workloadByName(wname)
						ws = append(ws, w)
					}
					if e.Dockerfile {
						df, _ := dockerfileByName(g[0])
						res.Results = append(res.Results, r.measureDockerfile(ctx, sname, spec, df, e.Profile.Name, run)...)
						continue
					}
					if e.Build {
						step, _ := buildStepByName(g[0])
						res.Results = append(res.Results, r.measureBuild(ctx, sname, spec, step, e.Profile.Name, run)...)
						continue
					}
					if e.BuildKit {
						res.Results = append(res.Results, r.measureBK(ctx, sname, spec, e.Profile.Name, run)...)
						continue
					}
					if e.Containerd {
						res.Results = append(res.Results, r.measureCtd(ctx, sname, spec, ws[0], e.Profile.Name, run)...)
					} else {
						res.Results = append(res.Results, r.measure(ctx, r.system(sname), spec, ws, e.Profile.Name, run, e.ColdOnly)...)
					}
				}
			}
		}
	}
	res.Containerd = r.ctdVersion
	return res, nil
}

// recRepo is the repository of the copy of img that carries the prefetch
// list recorded from workload w.
func recRepo(img imageSpec, w workload) string { return img.Name + "-rec-" + w.Name }

// trainMount makes, once a bench run, recRepo(img, w):tag: a copy of the
// image's eStargz form tag (estargz or plain) with a prefetch list recorded from one run of w on
// a Strata mount (straight to the registry, untimed, its state dropped).
func (r *runner) trainMount(ctx context.Context, img imageSpec, w workload, tag string) error {
	if r.trained[img.Name+"/"+w.Name+":"+tag] {
		return nil
	}
	dst := r.regHost + "/" + recRepo(img, w) + ":" + tag
	if err := copyImage(ctx, r.regHost+"/"+img.Name+":"+tag, dst); err != nil {
		return err
	}
	if tag == "gzip" {
		// The copy mounts lazily from its own indexes, as the image does.
		if err := r.indexRef(ctx, dst); err != nil {
			return err
		}
	}
	s := &strataSys{bin: r.o.strata, dir: filepath.Join(r.o.work, "run", "training"), mountArgs: []string{"--record", "--record-push"}}
	err := func() error {
		if err := s.Prepare(ctx); err != nil {
			return err
		}
		root, err := s.Mount(ctx, dst)
		if err != nil {
			return err
		}
		_, err = w.Run(ctx, root, img)
		return err
	}()
	// The unmount ends the recording and pushes the list.
	if err := errors.Join(err, s.Teardown(context.WithoutCancel(ctx))); err != nil {
		return err
	}
	if r.trained == nil {
		r.trained = map[string]bool{}
	}
	r.trained[img.Name+"/"+w.Name+":"+tag] = true
	return nil
}

// indexGzip runs `strata index` once per bench run on the plain gzip
// image, straight to the registry and untimed, as another machine would
// have: the strata-gzip rows then mount it from the pushed indexes.
func (r *runner) indexGzip(ctx context.Context, img imageSpec) error {
	if r.trained[img.Name+":gzip-index"] {
		return nil
	}
	var args []string
	if img.Prioritize != "" {
		// As the eStargz image stores these files first and prefetches
		// them, the gzip image's indexes hold checkpoints before them and
		// its prefetch list names them.
		args = append(args, "--prioritize", prioritizedList(filepath.Join(r.o.work, "images"), img))
	}
	if err := r.indexRef(ctx, r.regHost+"/"+img.Name+":gzip", args...); err != nil {
		return err
	}
	if r.trained == nil {
		r.trained = map[string]bool{}
	}
	r.trained[img.Name+":gzip-index"] = true
	return nil
}

// indexRef runs `strata index` on ref from a daemon of its own, with args
// before ref.
func (r *runner) indexRef(ctx context.Context, ref string, args ...string) error {
	s := &strataSys{bin: r.o.strata, dir: filepath.Join(r.o.work, "run", "indexing")}
	err := func() error {
		if err := s.Prepare(ctx); err != nil {
			return err
		}
		return run(ctx, s.bin, append(append([]string{"index", "--socket", s.socket(), "--insecure", "-q"}, args...), ref)...)
	}()
	return errors.Join(err, s.Teardown(context.WithoutCancel(ctx)))
}

// measure mounts (or pulls) the image once, then for each workload does a
// cold run and the warm and hot repeats on that mount. A workload's cold
// time is the mount's time plus its own from a cold page cache (for the
// first workload, the mount's caches are cold too).
func (r *runner) measure(ctx context.Context, sys system, img imageSpec, ws []workload, profile string, run int, coldOnly []string) []result {
	var out []result
	fail := func(w workload, state string, err error) []result {
		r.log.Error("measurement failed", "system", sys.Name(), "image", img.Name, "workload", w.Name, "state", state, "err", err)
		return append(out, result{Profile: profile, Image: img.Name, Workload: w.Name, System: sys.Name(), Run: run, State: state, Err: err.Error()})
	}
	defer func() {
		if err := sys.Teardown(context.WithoutCancel(ctx)); err != nil {
			r.log.Warn("teardown", "system", sys.Name(), "err", err)
		}
	}()
	if err := sys.Prepare(ctx); err != nil {
		return fail(ws[0], "cold", err)
	}
	if err := dropCaches(); err != nil {
		return fail(ws[0], "cold", fmt.Errorf("drop caches: %w", err))
	}
	repo := img.Name
	if sys.Name() == strataRec || sys.Name() == strataPlainRec || sys.Name() == strataGzipRec {
		if err := r.trainMount(ctx, img, ws[0], sys.Tag()); err != nil {
			return fail(ws[0], "cold", fmt.Errorf("recording the prefetch list: %w", err))
		}
		repo = recRepo(img, ws[0])
		if err := dropCaches(); err != nil {
			return fail(ws[0], "cold", fmt.Errorf("drop caches: %w", err))
		}
	}
	if sys.Name() == strataGzip || sys.Name() == sociName {
		index := r.indexGzip
		if sys.Name() == sociName {
			index = r.indexSoci
		}
		if err := index(ctx, img); err != nil {
			return fail(ws[0], "cold", fmt.Errorf("indexing the gzip image: %w", err))
		}
		if err := dropCaches(); err != nil {
			return fail(ws[0], "cold", fmt.Errorf("drop caches: %w", err))
		}
	}
	ref := r.px.Host() + "/" + repo + ":" + sys.Tag()
	r.px.ResetStats()
	t0 := time.Now()
	root, err := sys.Mount(ctx, ref)
	if err != nil {
		return fail(ws[0], "cold", err)
	}
	mounted := time.Since(t0).Seconds()
	mountStats := r.px.Stats()
	for i, w := range ws {
		base := result{Profile: profile, Image: img.Name, Workload: w.Name, System: sys.Name(), Run: run}
		// The first workload's timer started with the mount; a later one
		// adds the mount's time and traffic to its own.
		start, shared, before := t0, 0.0, proxy.Stats{}
		if i > 0 {
			if err := dropCaches(); err != nil {
				return fail(w, "cold", fmt.Errorf("drop caches: %w", err))
			}
			r.px.ResetStats()
			start, shared, before = time.Now(), mounted, mountStats
		}
		amount, err := w.Run(ctx, root, img)
		if err != nil {
			return fail(w, "cold", err)
		}
		cold := r.finish(base, "cold", shared+time.Since(start).Seconds(), amount)
		cold.RSS, cold.PeakRSS = daemonMemory(sys)
		cold.MountSeconds, cold.SharedMount = mounted, i > 0
		cold.Bytes += before.BytesOut
		cold.Requests += before.Requests
		r.saveLog(cold)
		out = append(out, cold)
		r.log.Info("cold", "system", sys.Name(), "image", img.Name, "workload", w.Name, "profile", profile,
			"s", fmt.Sprintf("%.2f", cold.Seconds), "mount", fmt.Sprintf("%.2f", mounted), "MB", cold.Bytes>>20, "req", cold.Requests)
		states := []string{"warm", "hot"}
		if slices.Contains(coldOnly, w.Name) {
			states = nil
		}
		for _, state := range states {
			if state == "warm" {
				if err := dropCaches(); err != nil {
					return fail(w, state, err)
				}
			}
			r.px.ResetStats()
			t := time.Now()
			amount, err := w.Run(ctx, root, img)
			if err != nil {
				return fail(w, state, err)
			}
			res := r.finish(base, state, time.Since(t).Seconds(), amount)
			res.RSS, res.PeakRSS = daemonMemory(sys)
			out = append(out, res)
		}
		if _, done := r.reads[img.Name+"/"+w.Name]; !done && sys.Name() == "fullpull" && tracedWorkloads[w.Name] {
			est, err := traceReads(ctx, root, w)
			if err != nil {
				r.log.Warn("strace", "err", err)
			}
			if layers, err := layerReaders(ctx, r.regHost, img.Name); err != nil {
				r.log.Warn("eStargz TOCs for the bytes estimate", "image", img.Name, "err", err)
			} else {
				est.Compressed = compressedSize(layers, est.Paths)
			}
			r.reads[img.Name+"/"+w.Name] = est
		}
	}
	return out
}

func (r *runner) saveLog(res result) {
	dir := filepath.Join(r.o.work, "logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	name := fmt.Sprintf("%s-%s-%s-%s-%d.json", res.Profile, res.Image, res.Workload, res.System, res.Run)
	if res.State != "" && res.State != "cold" {
		// A rebuild after a cold build must not overwrite its log.
		name = fmt.Sprintf("%s-%s-%s-%s-%s-%d.json", res.Profile, res.Image, res.Workload, res.System, res.State, res.Run)
	}
	if err := writeJSON(filepath.Join(dir, name), r.px.Stats().Log); err != nil {
		r.log.Warn("request log", "err", err)
	}
}

func (r *runner) finish(base result, state string, secs, amount float64) result {
	st := r.px.Stats()
	base.State, base.Seconds, base.Amount = state, secs, amount
	base.Bytes, base.Requests = st.BytesOut, st.Requests
	return base
}

func manifestSizes(ctx context.Context, reg, img string) imageSizes {
	var s imageSizes
	for _, tag := range []string{"gzip", "estargz"} {
		ref, err := name.ParseReference(reg+"/"+img+":"+tag, name.Insecure)
		if err != nil {
			continue
		}
		im, err := remote.Image(ref, remote.WithContext(ctx))
		if err != nil {
			continue
		}
		m, err := im.Manifest()
		if err != nil {
			continue
		}
		var n int64
		for _, l := range m.Layers {
			n += l.Size
		}
		if tag == "gzip" {
			s.Gzip = n
		} else {
			s.Estargz = n
		}
	}
	return s
}
