package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// The Dockerfile comparison (issue 15): a whole Dockerfile built cold from
// the base image in the registry to the result pushed back to it. Strata
// runs `strata build --push` on the eStargz base, which it mounts lazily
// and never downloads, pushing only the new layers; buildah (apt, 1.28)
// runs `buildah bud` on the gzip base, which it pulls whole into storage
// of its own, then `buildah push`. Both build the same text: the
// Dockerfiles take their base from the BASE build argument. After Strata's
// cold build the same command is run again, daemon and caches warm: the
// rebuild, recorded as the "hot" state. The system names differ from the
// build steps' (build.go) so their results never mix.
const (
	dfStrata  = "strata-build"
	dfBuildah = "buildah-bud"
)

var dfSystems = []string{dfStrata, dfBuildah}

// dockerfile is one Dockerfile the bench builds, with its build context.
type dockerfile struct {
	Name, Desc string
	Text       string
	Context    map[string]string // file name → content, beside the Dockerfile
	// Recorded builds FROM the copy of the image that carries the
	// compiling step's recorded prefetch list (see buildStep.Recorded);
	// Strata only.
	Recorded bool
}

var dockerfiles = []dockerfile{
	{Name: "df-small", Desc: "`RUN go version > /v`, `COPY` of a small file",
		Text:    "ARG BASE\nFROM $BASE\nRUN go version > /v\nCOPY small.txt /small.txt\n",
		Context: map[string]string{"small.txt": "a small file for the bench's COPY\n"}},
	// The Go build cache is a tmpfs for the RUN only, as in the compiling
	// build step: RUN --mount=type=tmpfs, which buildah 1.28 supports too
	// (with chroot isolation), so the layer holds the binary alone.
	{Name: "df-compile", Desc: "`COPY` of a hello-world module, `WORKDIR`, `RUN go build` (the build cache a tmpfs for the RUN)",
		Text: "ARG BASE\nFROM $BASE\nCOPY go.mod hello.go /src/\nWORKDIR /src\n" +
			"RUN --mount=type=tmpfs,target=" + gocacheDir + " " + strings.Join(goEnv, " ") + " go build -o /usr/local/bin/hello .\n",
		Context: helloFiles},
}

// dfCompileRec is df-compile FROM the image with a recorded list.
var dfCompileRec = func() dockerfile {
	var d dockerfile
	for _, x := range dockerfiles {
		if x.Name == "df-compile" {
			d = x
		}
	}
	d.Name, d.Recorded = "df-compile-rec", true
	d.Desc = "`df-compile` FROM the copy of the image (`golang-rec`) that carries the compiling step's recorded prefetch list; Strata only"
	return d
}()

func dockerfileByName(n string) (dockerfile, bool) {
	if n == "df-compile-rec" {
		return dfCompileRec, true
	}
	for _, d := range dockerfiles {
		if d.Name == n {
			return d, true
		}
	}
	return dockerfile{}, false
}

// dfBuild is what one build is asked for: the context directory, the base
// image for BASE and the reference to push the result to.
type dfBuild struct{ Context, Base, Ref string }

// dockerfileSystem is one way of building a Dockerfile and pushing the
// result. Prepare (not timed) makes a fresh, empty state; Build is timed,
// and cuts its commands into phases with clock.
type dockerfileSystem interface {
	Tag() string // the base image's form: "gzip" or "estargz"
	Prepare(ctx context.Context) error
	Build(ctx context.Context, b dfBuild, clock *phaseClock) error
	Teardown(ctx context.Context) error
}

func (r *runner) dockerfileSystem(name, dir string) dockerfileSystem {
	if name == dfBuildah {
		return &buildahDockerfile{dir: dir}
	}
	return &strataDockerfile{bin: r.o.strata, dir: dir}
}

// measureDockerfile does one cold build of df with system sname on a fresh
// tmpfs, page cache dropped, and for Strata the rebuild after it.
func (r *runner) measureDockerfile(ctx context.Context, sname string, img imageSpec, df dockerfile, profile string, run int) []result {
	base := result{Profile: profile, Image: img.Name, Workload: df.Name, System: sname, State: "cold", Run: run}
	fail := func(err error) []result {
		r.log.Error("Dockerfile build failed", "system", sname, "dockerfile", df.Name, "err", err)
		base.Err = err.Error()
		return []result{base}
	}
	repo := img.Name
	if df.Recorded {
		step, _ := buildStepByName("compile-rec")
		if err := r.trainRecorded(ctx, img, step); err != nil {
			return fail(fmt.Errorf("recording the prefetch list: %w", err))
		}
		repo += "-rec"
	}
	dir, err := r.buildTmpfs()
	if err != nil {
		return fail(err)
	}
	sys := r.dockerfileSystem(sname, dir)
	defer func() {
		err := sys.Teardown(context.WithoutCancel(ctx))
		// As the build steps' (see measureBuild).
		keepFile(filepath.Join(dir, "root", "daemon.log"),
			filepath.Join(r.o.work, "logs", fmt.Sprintf("%s-%s-%s-%s-%d.daemon.log", profile, img.Name, df.Name, sname, run)))
		if err := errors.Join(err, resetDir(dir)); err != nil {
			r.log.Warn("Dockerfile build teardown", "system", sname, "err", err)
		}
	}()
	if err := sys.Prepare(ctx); err != nil {
		return fail(err)
	}
	b := dfBuild{Context: filepath.Join(dir, "context"), Base: r.px.Host() + "/" + repo + ":" + sys.Tag(),
		Ref: fmt.Sprintf("%s/%s-built:%s-%s-%d", r.px.Host(), img.Name, sname, df.Name, run)}
	if err := writeContext(b.Context, df); err != nil {
		return fail(err)
	}
	if err := dropCaches(); err != nil {
		return fail(fmt.Errorf("drop caches: %w", err))
	}
	clock := newPhaseClock(r.px)
	if err := sys.Build(ctx, b, clock); err != nil {
		return fail(err)
	}
	cold := sumPhases(base, clock.phases)
	s, lazy := sys.(*strataDockerfile)
	if lazy {
		if cpu, err := pidCPU(s.daemonPID); err == nil {
			cold.DaemonCPU = cpu
		}
		cold.RSS, cold.PeakRSS, _ = procMemory(s.daemonPID)
	}
	r.saveLog(cold)
	r.log.Info("cold", "system", sname, "dockerfile", df.Name, "profile", profile, "s", fmt.Sprintf("%.2f", cold.Seconds),
		"MB down", cold.Bytes>>20, "MB up", cold.BytesIn>>20)
	out := []result{cold}
	if lazy {
		out = append(out, r.rebuild(ctx, s, b, base))
	}
	return out
}

// rebuild runs Strata's build of b once more, at once, on the same daemon:
// every step must come from the build cache.
func (r *runner) rebuild(ctx context.Context, s *strataDockerfile, b dfBuild, base result) result {
	base.State = "hot"
	clock := newPhaseClock(r.px)
	err := s.Build(ctx, b, clock)
	if err == nil && s.ran > 0 {
		err = fmt.Errorf("the rebuild ran %d steps (%d from the cache): not everything was cached", s.ran, s.cached)
	}
	if err != nil {
		r.log.Error("rebuild failed", "dockerfile", base.Workload, "err", err)
		base.Err = err.Error()
		return base
	}
	res := sumPhases(base, clock.phases)
	r.saveLog(res)
	r.log.Info("rebuild", "dockerfile", base.Workload, "s", fmt.Sprintf("%.2f", res.Seconds), "kB down", res.Bytes>>10, "kB up", res.BytesIn>>10)
	return res
}

// writeContext writes df's Dockerfile and context files to dir.
func writeContext(dir string, df dockerfile) error {
	files := map[string]string{"Dockerfile": df.Text}
	for n, body := range df.Context {
		files[n] = body
	}
	return writeFiles(dir, files)
}

// strataDockerfile is `strata build --push` as a user runs it. Its first
// build starts a daemon on a fresh state root (the start is timed: buildah
// has none), so the chunk cache and the build cache start empty.
type strataDockerfile struct {
	bin, dir  string
	daemonPID int
	// ran and cached are the steps the last build ran and took from its
	// cache, as it reported them.
	ran, cached int
}

func (s *strataDockerfile) Tag() string                       { return "estargz" }
func (s *strataDockerfile) Prepare(ctx context.Context) error { return nil }

// builtSteps is the summary line `strata build` ends with.
var builtSteps = regexp.MustCompile(`(\d+) steps? run, (\d+) steps? from the cache`)

func (s *strataDockerfile) Build(ctx context.Context, b dfBuild, clock *phaseClock) error {
	args := []string{"build", "--socket", filepath.Join(s.dir, "strata.sock"), "--root", filepath.Join(s.dir, "root"),
		"--insecure", "--push", "-t", b.Ref, "--build-arg", "BASE=" + b.Base, b.Context}
	out, err := exec.CommandContext(ctx, s.bin, args...).CombinedOutput()
	clock.lap("build+push")
	if m := startedDaemon.FindSubmatch(out); m != nil {
		s.daemonPID, _ = strconv.Atoi(string(m[1]))
	}
	if err != nil {
		return fmt.Errorf("strata build: %w\n%s\ndaemon log: %s", err, lastN(out, 2000),
			tailFile(filepath.Join(s.dir, "root", "daemon.log")))
	}
	m := builtSteps.FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("strata build did not say what it ran:\n%s", lastN(out, 2000))
	}
	s.ran, _ = strconv.Atoi(string(m[1]))
	s.cached, _ = strconv.Atoi(string(m[2]))
	return nil
}

// Teardown stops the daemon the first build started; the caller unmounts
// what is left under dir and removes it.
func (s *strataDockerfile) Teardown(ctx context.Context) error {
	if s.daemonPID > 0 {
		stopPID(s.daemonPID)
		s.daemonPID = 0
	}
	return nil
}

// buildahDockerfile is `buildah bud` then `buildah push`, with storage of
// its own under dir, chroot isolation as in the build steps, and
// --layers=false (buildah's default: the build's changes in one new layer,
// no intermediate images).
type buildahDockerfile struct{ dir string }

func (b *buildahDockerfile) Tag() string { return "gzip" }
func (b *buildahDockerfile) Prepare(ctx context.Context) error {
	return os.MkdirAll(filepath.Join(b.dir, "buildah"), 0o755)
}

func (b *buildahDockerfile) Build(ctx context.Context, d dfBuild, clock *phaseClock) error {
	const local = "bench-built"
	if err := buildahIn(ctx, b.dir, "bud", "--quiet", "--layers=false", "--isolation", "chroot", "--tls-verify=false",
		"--build-arg", "BASE="+d.Base, "-t", local, d.Context); err != nil {
		return err
	}
	clock.lap("bud")
	if err := buildahIn(ctx, b.dir, "push", "--quiet", "--tls-verify=false", local, "docker://"+d.Ref); err != nil {
		return err
	}
	clock.lap("push")
	return nil
}

func (b *buildahDockerfile) Teardown(ctx context.Context) error { return nil }
