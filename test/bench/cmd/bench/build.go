package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/stratafs/strata/test/proxy"
)

// The build-path comparison (issues 12 and 13): one build step, cold, from
// the base image in the registry to the new image pushed back to it.
// Strata mounts the eStargz base writable, runs the step's commands in it
// and commits, pushing only the new layer (the base's blobs are mounted
// from the base's repository, never downloaded); buildah (apt, 1.28) pulls
// the gzip base whole into its own storage, runs, commits and pushes. The
// system names differ from the mount systems' so their results never mix.
const (
	bldStrata  = "bld-strata"
	bldBuildah = "bld-buildah"
)

var bldSystems = []string{bldStrata, bldBuildah}

// buildStep is one step of a build, measured end to end.
type buildStep struct {
	Name, Desc string
	// Cmds run one after another, each a `strata run` or `buildah run`.
	Cmds [][]string
	// Src bind-mounts the hello-world program at /src as the working
	// directory, and gives the Go build cache a tmpfs for the run only,
	// as a cache mount would: the cache is not part of the layer.
	Src bool
	// Recorded runs the step (Strata only) on a copy of the image in the
	// repository IMAGE-rec, to which one untimed run of the same step with
	// `strata mount --record --record-push` has attached a prefetch list
	// (an OCI referrer): the step as a second build on a fresh machine.
	Recorded bool
}

// goEnv makes `go build` work in the bench's golang image (Debian minbase
// and a Go tree, no C compiler) without the network.
var goEnv = []string{"CGO_ENABLED=0", "GOCACHE=/tmp/gocache", "GOPATH=/tmp/gopath",
	"GOTOOLCHAIN=local", "GOPROXY=off", "GOFLAGS=-buildvcs=false"}

const gocacheDir = "/tmp/gocache"

var buildSteps = []buildStep{
	{Name: "small", Desc: "`go version`, then `echo built > /built.txt`, commit, push",
		Cmds: [][]string{{"go", "version"}, {"sh", "-c", "echo built > /built.txt"}}},
	{Name: "compile", Desc: "`go build -o /tmp/hello .` of a hello-world program bind-mounted at /src (" +
		"CGO_ENABLED=0, GOCACHE on a tmpfs for the run), commit, push",
		Cmds: [][]string{{"go", "build", "-o", "/tmp/hello", "."}}, Src: true},
	{Name: "compile-rec", Desc: "the compiling step on a copy of the image (repository `golang-rec`) that carries a prefetch list " +
		"recorded by one earlier, untimed run of the same step (`strata mount --record --record-push`); Strata only",
		Cmds: [][]string{{"go", "build", "-o", "/tmp/hello", "."}}, Src: true, Recorded: true},
}

// firstRun is the result taken from the small step when its first command
// has answered: issue 12's `mount --rw` + `run -- go version`.
const firstRun = "rw-goversion"

func buildStepByName(n string) (buildStep, bool) {
	for _, s := range buildSteps {
		if s.Name == n {
			return s, true
		}
	}
	return buildStep{}, false
}

// stepSystem is one way of doing a build step. Prepare (not timed) makes
// a fresh, empty state; From, Run and Commit are timed.
type stepSystem interface {
	Name() string
	Tag() string // the base image's form: "gzip" or "estargz"
	Prepare(ctx context.Context) error
	// From makes the base image ref a writable root: `strata mount --rw`
	// (lazy), or `buildah from` (a full pull into local storage).
	From(ctx context.Context, ref string) error
	Run(ctx context.Context, step buildStep, cmd []string) error
	// Commit makes a new image of what the runs changed and pushes it to
	// newRef.
	Commit(ctx context.Context, newRef string) error
	Teardown(ctx context.Context) error
}

func (r *runner) stepSystem(name, dir string) stepSystem {
	if name == bldBuildah {
		return &buildahSys{dir: dir}
	}
	return &strataBuild{bin: r.o.strata, dir: dir}
}

// phase is the time and traffic of one part of a build step.
type phase struct {
	Name     string
	Seconds  float64
	BytesOut int64 // registry to the system
	BytesIn  int64 // the system to the registry
	Requests int64
}

// phaseClock cuts a timed run into phases by the clock and the proxy's
// counters, which were reset when it started.
type phaseClock struct {
	px     *proxy.Proxy
	last   time.Time
	lastSt proxy.Stats
	phases []phase
}

func newPhaseClock(px *proxy.Proxy) *phaseClock {
	px.ResetStats()
	return &phaseClock{px: px, last: time.Now()}
}

func (c *phaseClock) lap(name string) {
	now, st := time.Now(), c.px.Stats()
	c.phases = append(c.phases, phase{Name: name, Seconds: now.Sub(c.last).Seconds(),
		BytesOut: st.BytesOut - c.lastSt.BytesOut, BytesIn: st.BytesIn - c.lastSt.BytesIn, Requests: st.Requests - c.lastSt.Requests})
	c.last, c.lastSt = now, st
}

// measureBuild does one cold run of step with system sname: fresh state on
// a tmpfs, page cache dropped, then the timed from, runs and commit+push.
// The small step also yields firstRun, cut when its first command ended.
func (r *runner) measureBuild(ctx context.Context, sname string, img imageSpec, step buildStep, profile string, run int) []result {
	base := result{Profile: profile, Image: img.Name, Workload: step.Name, System: sname, State: "cold", Run: run}
	fail := func(err error) []result {
		r.log.Error("build measurement failed", "system", sname, "step", step.Name, "err", err)
		base.Err = err.Error()
		return []result{base}
	}
	if step.Recorded {
		if err := r.trainRecorded(ctx, img, step); err != nil {
			return fail(fmt.Errorf("recording the prefetch list: %w", err))
		}
	}
	dir, err := r.buildTmpfs()
	if err != nil {
		return fail(err)
	}
	sys := r.stepSystem(sname, dir)
	defer func() {
		err := sys.Teardown(context.WithoutCancel(ctx))
		// Strata's daemon log goes next to the proxy's request log, for
		// the analysis of where the time went (with STRATA_LOG_LEVEL=debug
		// in the bench's environment it lists every fetch and wait).
		keepFile(filepath.Join(dir, "root", "daemon.log"),
			filepath.Join(r.o.work, "logs", fmt.Sprintf("%s-%s-%s-%s-%d.daemon.log", profile, img.Name, step.Name, sname, run)))
		if err := errors.Join(err, resetDir(dir)); err != nil {
			r.log.Warn("build teardown", "system", sname, "err", err)
		}
	}()
	if err := sys.Prepare(ctx); err != nil {
		return fail(err)
	}
	if step.Src {
		if err := writeHello(filepath.Join(dir, "src")); err != nil {
			return fail(err)
		}
	}
	if err := dropCaches(); err != nil {
		return fail(fmt.Errorf("drop caches: %w", err))
	}
	repo := img.Name
	if step.Recorded {
		repo += "-rec"
	}
	ref := r.px.Host() + "/" + repo + ":" + sys.Tag()
	newRef := fmt.Sprintf("%s/%s-built:%s-%s-%d", r.px.Host(), img.Name, sname, step.Name, run)
	clock := newPhaseClock(r.px)
	if err := sys.From(ctx, ref); err != nil {
		return fail(err)
	}
	clock.lap("from")
	for i, cmd := range step.Cmds {
		if err := sys.Run(ctx, step, cmd); err != nil {
			return fail(err)
		}
		clock.lap(fmt.Sprintf("run %d", i+1))
	}
	if err := sys.Commit(ctx, newRef); err != nil {
		return fail(err)
	}
	clock.lap("commit+push")
	res := buildResults(base, step, clock.phases)
	if d, ok := sys.(interface{ daemonCPU() (float64, error) }); ok {
		if cpu, err := d.daemonCPU(); err == nil {
			res[0].DaemonCPU = cpu
		}
	}
	if m, ok := sys.(memoryReporter); ok {
		res[0].RSS, res[0].PeakRSS, _ = m.Memory()
	}
	// Not part of the step: the first command once more, everything it
	// reads now local, is what a run costs the system without fetching.
	// Not for the compiling step: a second build would add a minute to
	// the matrix; the daemon's CPU time tells what serving it cost.
	if !step.Src {
		t := time.Now()
		if err := sys.Run(ctx, step, step.Cmds[0]); err != nil {
			r.log.Warn("first command again", "system", sname, "err", err)
		} else {
			res[0].Again = time.Since(t).Seconds()
		}
	}
	r.saveLog(res[0])
	r.log.Info("cold", "system", sname, "step", step.Name, "profile", profile, "s", fmt.Sprintf("%.2f", res[0].Seconds),
		"from", fmt.Sprintf("%.2f", res[0].MountSeconds), "MB down", res[0].Bytes>>20, "MB up", res[0].BytesIn>>20)
	return res
}

// trainRecorded makes, once a bench run, the repository IMAGE-rec: a copy
// of the image's eStargz form (its blobs mounted from the image's
// repository) with a prefetch list recorded by one run of step, straight
// to the registry (not through the proxy) and untimed. Its state goes
// with its tmpfs, so the measured runs start as cold as any other.
func (r *runner) trainRecorded(ctx context.Context, img imageSpec, step buildStep) error {
	if r.trained[img.Name+"/"+step.Name] {
		return nil
	}
	src, dst := r.regHost+"/"+img.Name+":estargz", r.regHost+"/"+img.Name+"-rec:estargz"
	if err := copyImage(ctx, src, dst); err != nil {
		return err
	}
	dir, err := r.buildTmpfs()
	if err != nil {
		return err
	}
	s := &strataBuild{bin: r.o.strata, dir: dir, mountArgs: []string{"--record", "--record-push"}}
	err = func() error {
		if err := s.Prepare(ctx); err != nil {
			return err
		}
		if err := writeHello(filepath.Join(dir, "src")); err != nil {
			return err
		}
		if err := s.From(ctx, dst); err != nil {
			return err
		}
		for _, cmd := range step.Cmds {
			if err := s.Run(ctx, step, cmd); err != nil {
				return err
			}
		}
		return nil
	}()
	// The unmount ends the recording and pushes the list.
	err = errors.Join(err, s.Teardown(context.WithoutCancel(ctx)))
	keepFile(filepath.Join(dir, "root", "daemon.log"), filepath.Join(r.o.work, "logs", img.Name+"-"+step.Name+"-training.daemon.log"))
	err = errors.Join(err, resetDir(dir))
	if err == nil {
		if r.trained == nil {
			r.trained = map[string]bool{}
		}
		r.trained[img.Name+"/"+step.Name] = true
	}
	return err
}

// buildTmpfs empties .bench/run/build and mounts a fresh tmpfs there for
// every file of one build run (buildah's storage, Strata's state root):
// neither system writes to a slower medium than the other, and the
// teardown is instant. The caller resets the directory when done.
func (r *runner) buildTmpfs() (string, error) {
	dir := filepath.Join(r.o.work, "run", "build")
	if err := resetDir(dir); err != nil {
		return "", err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8g,mode=0755"); err != nil {
		return "", fmt.Errorf("tmpfs on %s: %w", dir, err)
	}
	return dir, nil
}

// buildResults turns a run's phases into its results: the step end to
// end, and for the small step firstRun up to its first command.
func buildResults(base result, step buildStep, phases []phase) []result {
	out := []result{fromPhases(base, phases)}
	if step.Name == "small" {
		first := fromPhases(base, phases[:2])
		first.Workload, first.SharedMount = firstRun, true
		out = append(out, first)
	}
	return out
}

// fromPhases fills in a result's totals from its phases; the first phase
// (from) is its MountSeconds.
func fromPhases(base result, phases []phase) result {
	base = sumPhases(base, phases)
	if len(phases) > 0 {
		base.MountSeconds = phases[0].Seconds
	}
	return base
}

// sumPhases fills in a result's time and traffic from its phases.
func sumPhases(base result, phases []phase) result {
	base.Phases = phases
	for _, p := range phases {
		base.Seconds += p.Seconds
		base.Bytes += p.BytesOut
		base.BytesIn += p.BytesIn
		base.Requests += p.Requests
	}
	return base
}

// helloFiles are a stdlib-only hello-world module.
var helloFiles = map[string]string{
	"go.mod":   "module example.com/hello\n\ngo 1.22\n",
	"hello.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello, world\") }\n",
}

// writeHello writes helloFiles to dir.
func writeHello(dir string) error { return writeFiles(dir, helloFiles) }

// writeFiles writes each name → body of files under dir.
func writeFiles(dir string, files map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for n, body := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
