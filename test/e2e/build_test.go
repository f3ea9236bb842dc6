package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// The acceptance tests of `strata build`: the CLI binary against a daemon
// in this process, bases pushed to the shared registry, and buildah 1.28
// as the reference builder. Build contexts live in testdata/build and are
// copied to a temporary directory before a build, so a test may add to
// them (the tars ADD unpacks are written at run time).

// buildBench is a daemon, the strata binary and the Busybox base.
type buildBench struct {
	d    *testDaemon
	bin  string
	base string
}

func startBuildBench(t *testing.T) *buildBench {
	t.Helper()
	requireRoot(t)
	layers, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	base := push(t, shared.reg, "build-base", "v1", layers, fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))
	return &buildBench{d: startDaemon(t, nil), bin: buildStrata(t), base: base}
}

// build runs `strata build` of the context dir with BASE set to the
// Busybox base and SOURCE_DATE_EPOCH=0 (buildah gets --timestamp 0).
func (b *buildBench) build(t *testing.T, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{"build", "--socket", b.d.cfg.Socket, "--root", b.d.cfg.Root, "--build-arg", "BASE=" + b.base}, args...)
	cmd := exec.CommandContext(ctx, b.bin, append(full, dir)...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=0")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// mustBuild is build that fails the test on error; it returns the digest
// printed and the log.
func (b *buildBench) mustBuild(t *testing.T, dir string, args ...string) (digest, stderr string) {
	t.Helper()
	stdout, stderr, err := b.build(t, dir, args...)
	if err != nil {
		t.Fatalf("strata build %v: %v\n%s", args, err, stderr)
	}
	return strings.TrimSpace(stdout), stderr
}

// contextDir copies testdata/build/name to a new directory.
func contextDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "context")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", "build", name))); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildah runs buildah 1.28 with storage (vfs: no mounts stay) and
// TMPDIR (its cache mounts) under a temporary directory of the test. Its
// RUN steps use chroot isolation: no runtime, network or cgroup setup,
// none of which shows in a layer.
type buildah struct{ dir string }

func newBuildah(t *testing.T) *buildah {
	t.Helper()
	if _, err := exec.LookPath("buildah"); err != nil {
		t.Fatalf("buildah is missing: make test installs it (test/install-deps.sh): %v", err)
	}
	b := &buildah{dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(b.dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.cmd(context.Background(), "rm", "-a")
		b.cmd(context.Background(), "rmi", "-a", "-f")
		kmount.ClearStale(b.dir, nil)
	})
	return b
}

func (b *buildah) cmd(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "buildah", append([]string{"--root", filepath.Join(b.dir, "root"),
		"--runroot", filepath.Join(b.dir, "runroot"), "--storage-driver", "vfs"}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+filepath.Join(b.dir, "tmp"))
	return cmd.CombinedOutput()
}

// build runs `buildah bud` of dir and pushes the result to ref. Docker
// format, since an OCI config has no HEALTHCHECK or SHELL.
func (b *buildah) build(t *testing.T, dir, ref string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name := "localhost/" + strings.NewReplacer(":", "-", "/", "-").Replace(ref[strings.Index(ref, "/")+1:])
	bud := append([]string{"bud", "--layers", "--timestamp", "0", "--format", "docker", "--tls-verify=false",
		"--isolation", "chroot", "-t", name}, args...)
	if out, err := b.cmd(ctx, append(bud, dir)...); err != nil {
		t.Fatalf("buildah bud: %v\n%s", err, out)
	}
	if out, err := b.cmd(ctx, "push", "--tls-verify=false", "-f", "v2s2", name, "docker://"+ref); err != nil {
		t.Fatalf("buildah push: %v\n%s", err, out)
	}
}

// unpackRef is umoci's unpack of ref, walked and normalized.
func unpackRef(t *testing.T, ref string) []treecmp.Record {
	t.Helper()
	recs, _ := unpackRefDir(t, ref)
	return recs
}

// unpackRefDir is unpackRef that also returns where the tree is.
func unpackRefDir(t *testing.T, ref string) ([]treecmp.Record, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := treecmp.ReferenceUnpack(context.Background(), t, ref, dir); err != nil {
		t.Fatal(err)
	}
	return normalized(t, dir), dir
}

// reportSmallFiles logs both versions of the small files whose content
// differs between the trees at wantDir and gotDir, so that a failure shows
// what a command printed differently.
func reportSmallFiles(t *testing.T, want, got []treecmp.Record, wantDir, gotDir string) {
	t.Helper()
	sums := map[string]string{}
	for _, r := range want {
		if r.Type == "reg" && r.Size < 512 {
			sums[r.Path] = r.SHA256
		}
	}
	for _, r := range got {
		if sum, ok := sums[r.Path]; ok && r.Type == "reg" && r.Size < 512 && sum != r.SHA256 {
			w, _ := os.ReadFile(filepath.Join(wantDir, r.Path))
			g, _ := os.ReadFile(filepath.Join(gotDir, r.Path))
			t.Logf("%s: buildah's holds %q, strata's %q", r.Path, w, g)
		}
	}
}

// runLeftover reports what buildah 1.28 leaves in its RUN layers and
// Strata must not: the mount points of the container's /dev, /proc, /sys
// and /run and the empty files bound over /etc/hosts, /etc/hostname and
// /etc/resolv.conf.
func runLeftover(p string) bool {
	for _, d := range []string{"dev", "proc", "sys", "run"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return p == "etc/hosts" || p == "etc/hostname" || p == "etc/resolv.conf"
}

// checkNoLeftovers fails t for every path of tree that left reports and
// base does not have.
func checkNoLeftovers(t *testing.T, base, tree []treecmp.Record, left func(string) bool, ref string) {
	t.Helper()
	had := map[string]bool{}
	for _, r := range base {
		had[r.Path] = true
	}
	found := false
	for _, r := range tree {
		if left(r.Path) && !had[r.Path] {
			t.Errorf("strata's image has %s, which the base has not: a run left it in a layer", r.Path)
			found = true
		}
	}
	if found {
		logLayersOf(t, ref, left)
	}
}

// logLayersOf logs, for each layer of ref, its history entry and the
// entries of it that left reports: which step left them.
func logLayersOf(t *testing.T, ref string, left func(string) bool) {
	t.Helper()
	img := remoteImage(t, ref)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Logf("config of %s: %v", ref, err)
		return
	}
	var steps []string
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			steps = append(steps, h.CreatedBy)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		t.Logf("layers of %s: %v", ref, err)
		return
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Logf("layer %d: %v", i, err)
			continue
		}
		var names []string
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if n := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/"); left(n) {
				names = append(names, n)
			}
		}
		rc.Close()
		step := "?"
		if i < len(steps) {
			step = steps[i]
		}
		t.Logf("layer %d (%s): %v", i, step, names)
	}
}

// timesAside zeroes, in every tree, the mtime of each path that some tree
// does not have exactly as base has it: the times of new and changed
// entries depend on when and how a builder wrote them; those of entries
// both builders left alone must stay the base's.
func timesAside(base []treecmp.Record, trees ...[]treecmp.Record) {
	old := map[string]treecmp.Record{}
	for _, r := range base {
		old[r.Path] = r
	}
	changed := map[string]bool{}
	for _, tree := range trees {
		for _, r := range tree {
			if o, ok := old[r.Path]; !ok || !reflect.DeepEqual(o, r) {
				changed[r.Path] = true
			}
		}
	}
	for _, tree := range trees {
		for i := range tree {
			if changed[tree[i].Path] {
				tree[i].MTime = 0
			}
		}
	}
}

// configOf is the config fields a Dockerfile sets, as both builders must
// write them; buildah's io.buildah.version label aside.
func configOf(t *testing.T, ref string) v1.Config {
	t.Helper()
	cf, err := remoteImage(t, ref).ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	labels := maps.Clone(c.Labels)
	delete(labels, "io.buildah.version")
	return v1.Config{Env: c.Env, Cmd: c.Cmd, Entrypoint: c.Entrypoint, WorkingDir: c.WorkingDir, User: c.User,
		Labels: labels, ExposedPorts: c.ExposedPorts, Volumes: c.Volumes, StopSignal: c.StopSignal,
		Healthcheck: c.Healthcheck, Shell: c.Shell, OnBuild: c.OnBuild}
}

// healthStartOf is the raw config.Healthcheck.StartInterval of image ref
// (a field go-containerregistry's config model has not), null when none.
func healthStartOf(t *testing.T, ref string) json.RawMessage {
	t.Helper()
	raw, err := remoteImage(t, ref).RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var cf struct {
		Config struct {
			Healthcheck struct{ StartInterval json.RawMessage }
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &cf); err != nil {
		t.Fatal(err)
	}
	return cf.Config.Healthcheck.StartInterval
}

// sameCases are the build contexts under testdata/build/same, each built
// by both builders; prepare adds to the copied context. mountPoints are
// the targets of RUN --mount: buildah 1.28 leaves them in the layer as
// empty directories, BuildKit and Strata must not.
var sameCases = []struct {
	name        string
	args        []string
	prepare     func(t *testing.T, dir string)
	mountPoints []string
	// notBuildKit says why TestBuildSameAsBuildKit leaves the case out:
	// where buildah and BuildKit differ, Strata does as buildah does.
	notBuildKit string
	// noPath builds on the Busybox base with a config that sets no PATH.
	noPath bool
}{
	{name: "stages", args: []string{"--build-arg", "VERSION=2.5"}},
	{name: "ignore"},
	{name: "chown"},
	{name: "deletions"},
	{name: "mounts", mountPoints: []string{"root/.cache", "tmp/c1", "tmp/c2", "tmp/input", "tmp/gen", "tmp/scratch"}},
	{name: "addtar", prepare: writeTars},
	{name: "onbuild"},
	{name: "config", args: []string{"--build-arg", "OVERRIDDEN=yes"}},
	{name: "context", prepare: writeContextKinds},
	{name: "scratch"},
	{name: "runchanges"},
	{name: "users"},
	{name: "fromimage"},
	{name: "syntax"},
	{name: "fromowners"},
	{name: "archives"},
	{name: "chownids"},
	{name: "merge", prepare: func(t *testing.T, dir string) { must(t, os.Chmod(filepath.Join(dir, "src", "sub"), 0o750)) }},
	{name: "addurl", prepare: serveDownloads},
	{name: "symlinks", notBuildKit: "BuildKit writes a COPY through a symlink to a file; buildah replaces the symlink"},
	{name: "args", args: []string{"--build-arg", "FROMCLI=cli", "--build-arg", "UNDECLARED=x", "--build-arg", "GLOBAL=from-cli"}},
	{name: "nopath", noPath: true},
}

// noPathBase pushes the Busybox base with a config that sets no PATH, and
// a layer of its own: buildah's layer cache takes a step on an image of the
// same layers for the same step, whatever its config.
func noPathBase(t *testing.T) string {
	t.Helper()
	layers, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	layers = append(layers, fixture.LayerSpec{fixture.Reg("nopath-base", 64, 1)})
	cfg := fixture.BusyboxConfig()
	cfg.Env = []string{"BASEENV=b"}
	return push(t, shared.reg, "build-base-nopath", "v1", layers, fixture.FormEStargz, fixture.WithConfig(cfg))
}

// TestBuildSameAsBuildah builds each context of testdata/build/same with
// strata build and with buildah bud on the same base, and checks that
// umoci's unpacks of the two pushed images are the same tree, entry by
// entry (times of new entries and buildah's run leftovers aside), and that
// the configs agree on everything a Dockerfile sets.
func TestBuildSameAsBuildah(t *testing.T) {
	b := startBuildBench(t)
	bah := newBuildah(t)
	base := unpackRef(t, b.base)
	for _, c := range sameCases {
		t.Run(c.name, func(t *testing.T) {
			logStart := len(logs.String())
			baseRef := b.base
			if c.noPath {
				baseRef = noPathBase(t)
			}
			dir := sameContext(t, c.name, baseRef, c.prepare)
			strataRef := shared.reg.Ref("build-same", c.name+"-strata")
			buildahRef := shared.reg.Ref("build-same", c.name+"-buildah")
			bah.build(t, dir, buildahRef, append(slices.Clone(c.args), "--build-arg", "BASE="+baseRef)...)
			b.mustBuild(t, dir, append(slices.Clone(c.args), "--build-arg", "BASE="+baseRef, "-t", strataRef, "--push")...)

			left := func(p string) bool { return runLeftover(p) || slices.Contains(c.mountPoints, p) }
			compareBuilds(t, base, "buildah", buildahRef, strataRef, left)
			// The read path on the layers buildah wrote.
			checkMountIsUnpack(t, b.d, "buildah", buildahRef)
			// An image built FROM scratch is only in the store: nothing
			// asks the registry its made-up name names.
			if log := logs.String()[logStart:]; strings.Contains(log, "://strata.invalid") {
				t.Error("the daemon sent a request to the scratch image's repository, strata.invalid")
			}
		})
	}
}

// checkMountIsUnpack mounts ref, which builder built, and checks that the
// mount is umoci's full unpack of it, entry by entry, but for the root's
// time: the mount shows the top layer's root, which BuildKit and buildah
// write no entry for, where umoci keeps the last "./" entry's.
func checkMountIsUnpack(t *testing.T, d *testDaemon, builder, ref string) {
	t.Helper()
	mnt, _ := d.mount(t, ref)
	got, err := treecmp.Walk(mnt)
	must(t, err)
	rootTimeAside := func(recs []treecmp.Record) []treecmp.Record {
		for i := range recs {
			if recs[i].Path == "." {
				recs[i].MTime = 0
			}
		}
		return recs
	}
	for _, diff := range treecmp.Diff(rootTimeAside(unpackRef(t, ref)), rootTimeAside(treecmp.DropEmptyXattrs(got)), treecmp.SkipPaths(estargzBookkeeping)) {
		t.Errorf("%s's image mounted differs from umoci's full unpack: %s", builder, diff)
	}
}

// sameContext copies testdata/build/same/name, puts base in its
// Dockerfile for @BASE@ (buildah 1.28 expands no ARG in COPY --from, so an
// image copied from is written so), and runs prepare on it.
func sameContext(t *testing.T, name, base string, prepare func(t *testing.T, dir string)) string {
	t.Helper()
	dir := contextDir(t, filepath.Join("same", name))
	df := filepath.Join(dir, "Dockerfile")
	text, err := os.ReadFile(df)
	must(t, err)
	must(t, os.WriteFile(df, bytes.ReplaceAll(text, []byte("@BASE@"), []byte(base)), 0o644))
	if prepare != nil {
		prepare(t, dir)
	}
	return dir
}

// compareBuilds checks that the image strataRef, built on base, is the
// image ref, built by builder from the same Dockerfile: umoci's unpacks the
// same tree, entry by entry (times of new entries, and the paths left says
// builder leaves, aside; strata must leave none of those), and configs
// that agree on everything a Dockerfile sets.
func compareBuilds(t *testing.T, base []treecmp.Record, builder, ref, strataRef string, left func(string) bool) {
	t.Helper()
	got, gotDir := unpackRefDir(t, strataRef)
	want, wantDir := unpackRefDir(t, ref)
	reportSmallFiles(t, want, got, wantDir, gotDir)
	checkNoLeftovers(t, base, got, left, strataRef)
	timesAside(base, got, want)
	reportDiffs(t, "strata's image differs from "+builder+"'s (want is "+builder+"'s)", treecmp.Diff(want, got,
		treecmp.SkipPaths(func(p string) bool { return left(p) || estargzBookkeeping(p) })))
	// As JSON: an empty list or map and none are the same config.
	// With the health check's start interval, which the model lacks.
	type compared struct {
		v1.Config
		HealthStartInterval json.RawMessage
	}
	w, _ := json.MarshalIndent(compared{configOf(t, ref), healthStartOf(t, ref)}, "", "  ")
	g, _ := json.MarshalIndent(compared{configOf(t, strataRef), healthStartOf(t, strataRef)}, "", "  ")
	if !bytes.Equal(w, g) {
		t.Errorf("strata's config differs from %s's:\n%s: %s\nstrata:  %s", builder, builder, w, g)
	}
}

// TestBuildSameAsBuildKit builds what buildah 1.28 cannot build
// (testdata/build/reference: heredocs, COPY --link and --chmod, rw bind
// mounts, SHELL on the shell forms of CMD and ENTRYPOINT, a last WORKDIR;
// testdata/build/escape: the escape directive; testdata/build/exclude:
// COPY and ADD --exclude; testdata/build/checksum: ADD --checksum;
// testdata/build/parents: COPY --parents; testdata/build/runmounts and
// secrets: RUN --mount options; testdata/build/misc: the platform ARGs
// and config edges; testdata/build/heredocs, archives-chown, dockerignore;
// testdata/build/ownignore: a Dockerfile's own Dockerfile.dockerignore)
// with BuildKit, its containerd worker on containerd's own overlayfs
// snapshotter, and with strata build on the same base, and compares the
// two images as TestBuildSameAsBuildah does.
func TestBuildSameAsBuildKit(t *testing.T) {
	// Last, one at a time: BuildKit's binaries may be building meanwhile.
	t.Parallel()
	buildKitSerial.Lock()
	defer buildKitSerial.Unlock()
	e := startCtdEnv(t)
	b := startBuildBench(t)
	bk := startBuildKitd(t, e, "overlayfs", shared.reg.Host())
	base := unpackRef(t, b.base)
	// A secret for the contexts' RUN --mount=type=secret,id=tok.
	secret := filepath.Join(t.TempDir(), "secret.txt")
	must(t, os.WriteFile(secret, []byte("s3cr3t"), 0o644))
	build := func(t *testing.T, dir, name string, args []string) {
		t.Helper()
		args = append(slices.Clone(args), "--secret", "id=tok,src="+secret, "--secret", "id=dir/tok,src="+secret)
		bkRef := shared.reg.Ref("build-buildkit", name+"-buildkit")
		strataRef := shared.reg.Ref("build-buildkit", name+"-strata")
		bkArgs := []string{"build", "--progress", "plain", "--frontend", "dockerfile.v0",
			"--local", "context=" + dir, "--local", "dockerfile=" + dir,
			"--opt", "build-arg:BASE=" + b.base, "--opt", "build-arg:SOURCE_DATE_EPOCH=0"}
		for i := 0; i+1 < len(args); i += 2 {
			switch args[i] {
			case "--build-arg":
				bkArgs = append(bkArgs, "--opt", "build-arg:"+args[i+1])
			case "--secret":
				bkArgs = append(bkArgs, "--secret", args[i+1])
			default:
				t.Fatalf("%s: no BuildKit option for %s", name, args[i])
			}
		}
		bkArgs = append(bkArgs, "--output", "type=image,name="+bkRef+",push=true,registry.insecure=true")
		if _, err := bk.buildctl(context.Background(), nil, bkArgs...); err != nil {
			t.Fatal(err)
		}
		b.mustBuild(t, dir, append(slices.Clone(args), "-t", strataRef, "--push")...)
		// BuildKit leaves /dev, /proc and /sys in RUN layers, as buildah
		// does.
		compareBuilds(t, base, "BuildKit", bkRef, strataRef, runLeftover)
		compareHistory(t, bkRef, strataRef)
		// The read path on the layers BuildKit wrote (gzip, whiteouts and
		// opaque directories its own way).
		checkMountIsUnpack(t, b.d, "BuildKit", bkRef)
	}
	for _, c := range []struct {
		name    string
		prepare func(t *testing.T, dir string)
	}{{"reference", nil}, {"escape", nil}, {"exclude", nil}, {"checksum", serveDownloads}, {"parents", parentsModes}, {"runmounts", nil}, {"secrets", nil}, {"misc", nil}, {"heredocs", nil}, {"archives-chown", nil}, {"dockerignore", nil}, {"ownignore", nil}} {
		t.Run(c.name, func(t *testing.T) {
			dir := contextDir(t, c.name)
			if c.prepare != nil {
				c.prepare(t, dir)
			}
			build(t, dir, c.name, nil)
		})
	}
	// And what buildah builds, where the two agree.
	for _, c := range sameCases {
		t.Run("same/"+c.name, func(t *testing.T) {
			if c.notBuildKit != "" {
				t.Logf("left out: %s", c.notBuildKit)
				return
			}
			build(t, sameContext(t, c.name, b.base, c.prepare), c.name, c.args)
		})
	}
}

// compareHistory compares the history of BuildKit's image with strata's,
// entry by entry: created_by (less the " # buildkit" BuildKit ends its
// layers' entries with) and empty_layer, but a RUN's or WORKDIR's:
// BuildKit gives each a layer, an empty tar where the step changed no
// file, and strata, as the issue asks of steps that change no files, an
// empty_layer entry (the trees are compared by themselves). ONBUILD,
// which BuildKit gives no entry, has one in strata's history, as in
// Docker's own builder's: it is left out.
func compareHistory(t *testing.T, ref, strataRef string) {
	t.Helper()
	entries := func(ref string) []string {
		cf, err := remoteImage(t, ref).ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, h := range cf.History {
			if strings.HasPrefix(h.CreatedBy, "ONBUILD ") {
				continue
			}
			e := fmt.Sprintf("%q", strings.TrimSuffix(h.CreatedBy, " # buildkit"))
			if !strings.HasPrefix(h.CreatedBy, "WORKDIR ") && !strings.HasPrefix(h.CreatedBy, "RUN ") {
				e += fmt.Sprintf(" empty_layer=%v", h.EmptyLayer)
			}
			out = append(out, e)
		}
		return out
	}
	want, got := entries(ref), entries(strataRef)
	if !slices.Equal(want, got) {
		t.Errorf("strata's history differs from BuildKit's:\nBuildKit:\n  %s\nstrata:\n  %s", strings.Join(want, "\n  "), strings.Join(got, "\n  "))
	}
}

// parentsModes gives the directories of testdata/build/parents modes of
// their own, for COPY --parents to carry or not.
func parentsModes(t *testing.T, dir string) {
	t.Helper()
	for rel, mode := range map[string]os.FileMode{"x": 0o750, "x/sub": 0o711, "z": 0o700, "z/deep": 0o755, "z/deep/er": 0o770} {
		must(t, os.Chmod(filepath.Join(dir, rel), mode))
	}
}

// serveDownloads starts an HTTP server on 127.0.0.1 for the test's ADDs of
// URLs and writes its address into the Dockerfile in dir for @URL@.
func serveDownloads(t *testing.T, dir string) {
	t.Helper()
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	must(t, tw.WriteHeader(&tar.Header{Name: "inner.txt", Mode: 0o644, Size: 6, ModTime: time.Unix(1700000000, 0)}))
	_, err := io.WriteString(tw, "inner\n")
	must(t, err)
	must(t, tw.Close())
	mux := http.NewServeMux()
	dated := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	mux.HandleFunc("/files/plain.txt", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "plain.txt", dated, strings.NewReader("downloaded\n"))
	})
	mux.HandleFunc("/files/archive.tar", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "archive.tar", dated, bytes.NewReader(tarball.Bytes()))
	})
	mux.HandleFunc("/nodate/undated.txt", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "no date\n")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	df := filepath.Join(dir, "Dockerfile")
	text, err := os.ReadFile(df)
	must(t, err)
	must(t, os.WriteFile(df, bytes.ReplaceAll(text, []byte("@URL@"), []byte("http://"+ln.Addr().String())), 0o644))
}

// writeContextKinds writes into dir's tree/ the kinds of entries a build
// context may hold besides plain files and directories.
func writeContextKinds(t *testing.T, dir string) {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	must(t, os.MkdirAll(filepath.Join(tree, "sub", "empty"), 0o755))
	must(t, os.WriteFile(filepath.Join(tree, "file.txt"), []byte("file\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(tree, "sub", "inner.txt"), []byte("inner\n"), 0o600))
	must(t, os.Link(filepath.Join(tree, "file.txt"), filepath.Join(tree, "hard.txt")))
	must(t, os.Symlink("file.txt", filepath.Join(tree, "link-to-file")))
	must(t, os.Symlink("sub", filepath.Join(tree, "link-to-dir")))
	must(t, os.Symlink("nowhere", filepath.Join(tree, "dangling")))
	must(t, os.WriteFile(filepath.Join(tree, "setuid"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Chmod(filepath.Join(tree, "setuid"), 0o4755))
	must(t, os.Mkdir(filepath.Join(tree, "sticky"), 0o755))
	must(t, os.Chmod(filepath.Join(tree, "sticky"), 0o1777))
	must(t, os.WriteFile(filepath.Join(tree, "owned"), []byte("owned\n"), 0o640))
	must(t, os.Lchown(filepath.Join(tree, "owned"), 4321, 8765))
	f, err := os.Create(filepath.Join(tree, "sparse"))
	must(t, err)
	_, err = f.WriteAt([]byte("end"), 4<<20)
	must(t, err)
	must(t, f.Close())
}

// writeTars writes files.tar, files.tar.gz and files.tar.xz into dir: a directory, files
// with owners and modes, a symlink and a hardlink.
func writeTars(t *testing.T, dir string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	when := time.Unix(1700000000, 0)
	add := func(h tar.Header, body string) {
		h.ModTime, h.Size = when, int64(len(body))
		must(t, tw.WriteHeader(&h))
		_, err := io.WriteString(tw, body)
		must(t, err)
	}
	add(tar.Header{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1234, Gid: 5678}, "")
	add(tar.Header{Name: "top/file.txt", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1234, Gid: 5678}, "in the tar\n")
	add(tar.Header{Name: "top/run.sh", Typeflag: tar.TypeReg, Mode: 0o755}, "#!/bin/sh\necho run\n")
	add(tar.Header{Name: "top/link", Typeflag: tar.TypeSymlink, Linkname: "file.txt"}, "")
	// A hardlink entry with its target's metadata, as tar writes it:
	// buildah 1.28 applies a link entry's mode and owner to the inode.
	add(tar.Header{Name: "top/hard", Typeflag: tar.TypeLink, Linkname: "top/file.txt", Mode: 0o640, Uid: 1234, Gid: 5678}, "")
	add(tar.Header{Name: "top/sub/", Typeflag: tar.TypeDir, Mode: 0o700}, "")
	add(tar.Header{Name: "top/sub/deep.txt", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 50}, "deep\n")
	must(t, tw.Close())
	must(t, os.WriteFile(filepath.Join(dir, "files.tar"), buf.Bytes(), 0o644))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, err := zw.Write(buf.Bytes())
	must(t, err)
	must(t, zw.Close())
	must(t, os.WriteFile(filepath.Join(dir, "files.tar.gz"), gz.Bytes(), 0o644))
	xz := exec.Command("xz", "--compress", "--stdout")
	xz.Stdin = bytes.NewReader(buf.Bytes())
	xzed, err := xz.Output()
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "files.tar.xz"), xzed, 0o644))
}

// TestBuildDockerfileReference checks what buildah 1.28 cannot build
// against what the Dockerfile reference says: heredocs in RUN (a script,
// one with a shebang, one fed to a command) and in COPY (expanded unless
// the delimiter is quoted, leading tabs stripped by <<-, mode 0644),
// COPY --chmod, COPY --link (the same files, in a layer of their own
// that holds nothing of the base), and rw bind mounts (writes allowed,
// then dropped: the context and the stage unchanged, no mount point left),
// SHELL applied to RUN and to the shell forms of CMD and ENTRYPOINT, and a
// WORKDIR made though nothing writes into it.
func TestBuildDockerfileReference(t *testing.T) {
	b := startBuildBench(t)
	ref := shared.reg.Ref("build-reference", "v1")
	dir := contextDir(t, "reference")
	b.mustBuild(t, dir, "-t", ref, "--push")
	if got, err := os.ReadFile(filepath.Join(dir, "dir", "x.txt")); err != nil || string(got) != "x\n" {
		t.Errorf("the context's dir/x.txt after an rw bind mount wrote to it: %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "dir", "new.txt")); err == nil {
		t.Error("a file an rw bind mount created is in the context")
	}
	if m, _ := kmount.Under(filepath.Join(b.d.cfg.Root, "build")); len(m) > 0 {
		t.Errorf("the build left mounts: %v", m)
	}
	recs, rootfs := unpackRefDir(t, ref)
	tree := map[string]treecmp.Record{}
	for _, r := range recs {
		tree[r.Path] = r
	}
	for _, w := range []struct {
		path, content  string
		mode, uid, gid uint32
	}{
		{"heredoc.txt", "heredoc line one\nsum 3\n", 0o644, 0, 0},
		{"shebang.txt", "from a script\n", 0o644, 0, 0},
		{"cat-heredoc.txt", "hello world\n", 0o644, 0, 0},
		{"etc/expanded.conf", "hello bar\n", 0o644, 0, 0},
		{"etc/literal.conf", "hello ${FOO}\n", 0o644, 0, 0},
		{"chmod/a.txt", "a\n", 0o640, 0, 0},
		{"chmod/dir/x.txt", "x\n", 0o755, 0, 0},
		{"chmod/dir/sub/y.txt", "y\n", 0o755, 0, 0},
		{"linked/a.txt", "a\n", 0o644, 0, 0},
		{"linked-owned/dir/x.txt", "x\n", 0o644, 1234, 5678},
		{"linked-owned/dir/sub/y.txt", "y\n", 0o644, 1234, 5678},
		{"rw/ctx.txt", "changed\n", 0o644, 0, 0},
		{"rw/ctx-after.txt", "x\n", 0o644, 0, 0},
		{"rw/ctx-listing.txt", "sub\nx.txt\n", 0o644, 0, 0},
		{"rw/stage-listing.txt", "", 0o644, 0, 0},
		{"rw/file.txt", "generated\nmore\n", 0o644, 0, 0},
		{"rw/stage-after.txt", "generated\n", 0o644, 0, 0},
		{"shell-flags.txt", "shell flags: ce\n", 0o644, 0, 0},
	} {
		r, ok := tree[w.path]
		sum := sha256.Sum256([]byte(w.content))
		switch {
		case !ok:
			t.Errorf("%s: missing", w.path)
		case r.Type != "reg" || r.SHA256 != hex.EncodeToString(sum[:]):
			got, _ := os.ReadFile(filepath.Join(rootfs, w.path))
			t.Errorf("%s: %s holding %q, want a file holding %q", w.path, r.Type, got, w.content)
		case r.Mode != w.mode || r.UID != w.uid || r.GID != w.gid:
			t.Errorf("%s: mode %04o owner %d:%d, want %04o %d:%d", w.path, r.Mode, r.UID, r.GID, w.mode, w.uid, w.gid)
		}
	}
	if r, ok := tree["made/by/workdir"]; !ok || r.Type != "dir" {
		t.Error("WORKDIR did not make its directory, which nothing after it writes into")
	}
	for _, p := range []string{"tmp/ctx", "tmp/gen", "tmp/genfile"} {
		if _, ok := tree[p]; ok {
			t.Errorf("a bind mount's target %s stays in the image", p)
		}
	}
	// SHELL applies to the shell forms of CMD and ENTRYPOINT too.
	cfg := configOf(t, ref)
	if want := []string{"/bin/sh", "-ec", "echo entry"}; !slices.Equal(cfg.Entrypoint, want) {
		t.Errorf("Entrypoint %q after SHELL, want %q", cfg.Entrypoint, want)
	}
	if want := []string{"/bin/sh", "-ec", "echo command"}; !slices.Equal(cfg.Cmd, want) {
		t.Errorf("Cmd %q after SHELL, want %q", cfg.Cmd, want)
	}
	// Each --link COPY is a layer of its own: its entries are what it
	// copies and the directories above them, nothing else.
	layers, err := remoteImage(t, ref).Layers()
	if err != nil {
		t.Fatal(err)
	}
	linked := 0
	for _, l := range layers {
		names := layerNames(t, l)
		top := ""
		for _, d := range []string{"linked", "linked-owned"} {
			if slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, d+"/") }) {
				top = d
			}
		}
		if top == "" {
			continue
		}
		linked++
		for _, n := range names {
			if n != top && !strings.HasPrefix(n, top+"/") {
				t.Errorf("a COPY --link layer into /%s holds %s", top, n)
			}
		}
	}
	if linked != 2 {
		t.Errorf("%d layers hold /linked or /linked-owned, want one per COPY --link (2)", linked)
	}
}

// layerNames lists a layer's tar entries, cleaned ("a/b", "." for the
// root), eStargz bookkeeping and the root left out.
func layerNames(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		n := filepath.Clean(strings.TrimPrefix(h.Name, "./"))
		if n != "." && !estargzBookkeeping(n) {
			names = append(names, n)
		}
	}
}
