package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
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
		kmount.ClearStale(b.dir)
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
func checkNoLeftovers(t *testing.T, base, tree []treecmp.Record, left func(string) bool) {
	t.Helper()
	had := map[string]bool{}
	for _, r := range base {
		had[r.Path] = true
	}
	for _, r := range tree {
		if left(r.Path) && !had[r.Path] {
			t.Errorf("strata's image has %s, which the base has not: a run left it in a layer", r.Path)
		}
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
		Healthcheck: c.Healthcheck, Shell: c.Shell}
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
}{
	{name: "stages", args: []string{"--build-arg", "VERSION=2.5"}},
	{name: "ignore"},
	{name: "chown"},
	{name: "deletions"},
	{name: "mounts", mountPoints: []string{"root/.cache", "tmp/c1", "tmp/c2", "tmp/input", "tmp/gen", "tmp/scratch"}},
	{name: "addtar", prepare: writeTars},
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
			dir := contextDir(t, filepath.Join("same", c.name))
			if c.prepare != nil {
				c.prepare(t, dir)
			}
			strataRef := shared.reg.Ref("build-same", c.name+"-strata")
			buildahRef := shared.reg.Ref("build-same", c.name+"-buildah")
			bah.build(t, dir, buildahRef, append(slices.Clone(c.args), "--build-arg", "BASE="+b.base)...)
			b.mustBuild(t, dir, append(slices.Clone(c.args), "-t", strataRef, "--push")...)

			got, gotDir := unpackRefDir(t, strataRef)
			want, wantDir := unpackRefDir(t, buildahRef)
			reportSmallFiles(t, want, got, wantDir, gotDir)
			left := func(p string) bool { return runLeftover(p) || slices.Contains(c.mountPoints, p) }
			checkNoLeftovers(t, base, got, left)
			timesAside(base, got, want)
			reportDiffs(t, "strata's image differs from buildah's (want is buildah's)", treecmp.Diff(want, got,
				treecmp.SkipPaths(func(p string) bool { return left(p) || estargzBookkeeping(p) })))
			// As JSON: an empty list or map and none are the same config.
			w, _ := json.MarshalIndent(configOf(t, buildahRef), "", "  ")
			g, _ := json.MarshalIndent(configOf(t, strataRef), "", "  ")
			if !bytes.Equal(w, g) {
				t.Errorf("strata's config differs from buildah's:\nbuildah: %s\nstrata:  %s", w, g)
			}
		})
	}
}

// writeTars writes files.tar and files.tar.gz into dir: a directory, files
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
}

// TestBuildDockerfileReference checks what buildah 1.28 cannot build
// against what the Dockerfile reference says: heredocs in RUN (a script,
// one with a shebang, one fed to a command) and in COPY (expanded unless
// the delimiter is quoted, leading tabs stripped by <<-, mode 0644),
// COPY --chmod, and COPY --link (the same files, in a layer of their own
// that holds nothing of the base).
func TestBuildDockerfileReference(t *testing.T) {
	b := startBuildBench(t)
	ref := shared.reg.Ref("build-reference", "v1")
	b.mustBuild(t, contextDir(t, "reference"), "-t", ref, "--push")
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
		{"linked/dir/x.txt", "x\n", 0o644, 1234, 5678},
		{"linked/dir/sub/y.txt", "y\n", 0o644, 1234, 5678},
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
	// Each --link COPY is a layer of its own: its entries are what it
	// copies and the directories above them, nothing else.
	layers, err := remoteImage(t, ref).Layers()
	if err != nil {
		t.Fatal(err)
	}
	linked := 0
	for _, l := range layers {
		names := layerNames(t, l)
		if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "linked/") }) {
			continue
		}
		linked++
		for _, n := range names {
			if n != "linked" && !strings.HasPrefix(n, "linked/") {
				t.Errorf("a COPY --link layer holds %s", n)
			}
		}
	}
	if linked != 2 {
		t.Errorf("%d layers hold /linked, want one per COPY --link (2)", linked)
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

// TestBuildSecret builds with a random secret used as a file at its
// default place and at a target, and as an environment variable: the
// steps see it, and it is in no layer, config or history, in nothing the
// daemon keeps (build cache included), and in no log.
func TestBuildSecret(t *testing.T) {
	b := startBuildBench(t)
	secret := "strata-secret-" + rand.Text()
	file := filepath.Join(t.TempDir(), "token")
	must(t, os.WriteFile(file, []byte(secret), 0o600))
	ref := shared.reg.Ref("build-secret", "v1")
	dir := contextDir(t, "secret")
	stdout, stderr := b.mustBuild(t, dir, "--secret", "id=token,src="+file, "-t", ref, "--push")
	if !strings.Contains(stderr, "the secret is mounted for this step") {
		t.Errorf("the last RUN's output is not in the log:\n%s", stderr)
	}
	for what, text := range map[string]string{"stdout": stdout, "stderr": stderr, "the daemon log": logs.String()} {
		if strings.Contains(text, secret) {
			t.Errorf("the secret is in %s", what)
		}
	}

	img := remoteImage(t, ref)
	raw, err := img.RawConfigFile()
	must(t, err)
	if bytes.Contains(raw, []byte(secret)) {
		t.Errorf("the secret is in the config or history:\n%s", raw)
	}
	layers, err := img.Layers()
	must(t, err)
	for i, l := range layers {
		rc, err := l.Uncompressed()
		must(t, err)
		body, err := io.ReadAll(rc)
		rc.Close()
		must(t, err)
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("the secret is in layer %d", i)
		}
	}
	checkNotUnder(t, b.d.cfg.Root, secret)

	tree := map[string]treecmp.Record{}
	for _, r := range unpackRef(t, ref) {
		tree[r.Path] = r
		if r.Path == "run" || strings.HasPrefix(r.Path, "run/") || strings.HasPrefix(r.Path, "etc/app") {
			t.Errorf("a secret's mount point is in the image: %s", r.Path)
		}
	}
	sum := sha256.Sum256([]byte(secret))
	for p, content := range map[string]string{
		"token.sha256": hex.EncodeToString(sum[:]) + "  -\n",
		"target.txt":   "mounted at the target\n",
		"env.txt":      fmt.Sprintf("env holds %d bytes\n", len(secret)),
	} {
		s := sha256.Sum256([]byte(content))
		if r := tree[p]; r.SHA256 != hex.EncodeToString(s[:]) {
			t.Errorf("%s does not hold %q: the step did not see the secret", p, content)
		}
	}

	// Nor is the value in a cache key, hashed or not: with a new value
	// every step comes from the cache, as in BuildKit.
	must(t, os.WriteFile(file, []byte(secret+"-rotated"), 0o600))
	if _, stderr := b.mustBuild(t, dir, "--secret", "id=token,src="+file); !strings.Contains(stderr, "0 steps run") {
		t.Errorf("a new value of the secret ran steps again:\n%s", stderr)
	}
}

// checkNotUnder fails t for every regular file under root, mounts left
// out, that holds needle.
func checkNotUnder(t *testing.T, root, needle string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && kmount.IsMountpoint(p) {
			return fs.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(needle)) {
			t.Errorf("the secret is in %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBuildCache builds a context three times: unchanged, a rebuild runs
// no step and gives the same digest; with the second copied file changed,
// the steps before its COPY come from the cache and the ones from it on
// run again.
func TestBuildCache(t *testing.T) {
	b := startBuildBench(t)
	dir := contextDir(t, "cache")
	ref := shared.reg.Ref("build-cache", "v1")
	markers := []string{"step-one-ran", "step-after-a-ran", "step-after-b-ran"}
	// A marker on a line of its own is a RUN's output; the STEP lines
	// quote it inside the command.
	ran := func(stderr string) []string {
		lines := strings.Split(stderr, "\n")
		var out []string
		for _, m := range markers {
			if slices.Contains(lines, m) {
				out = append(out, m)
			}
		}
		return out
	}

	first, stderr := b.mustBuild(t, dir, "-t", ref, "--push")
	if got := ran(stderr); !slices.Equal(got, markers) {
		t.Fatalf("a first build ran %v, want every RUN:\n%s", got, stderr)
	}

	again, stderr := b.mustBuild(t, dir, "-t", ref, "--push")
	if again != first {
		t.Errorf("a rebuild with nothing changed gave %s, the first build %s", again, first)
	}
	if got := ran(stderr); len(got) > 0 || !strings.Contains(stderr, "0 steps run, 5 steps from the cache") {
		t.Errorf("a rebuild with nothing changed ran %v; want no step run and 5 from the cache:\n%s", got, stderr)
	}

	must(t, os.WriteFile(filepath.Join(dir, "b.txt"), []byte("b changed\n"), 0o644))
	changed, stderr := b.mustBuild(t, dir, "-t", ref, "--push")
	if changed == first {
		t.Errorf("changing a copied file left the digest %s", first)
	}
	if got := ran(stderr); !slices.Equal(got, markers[2:]) {
		t.Errorf("after b.txt changed the build ran %v, want only the RUN after COPY b.txt", got)
	}
	if n := strings.Count(stderr, "  cached: "); n != 3 || !strings.Contains(stderr, "2 steps run, 3 steps from the cache") {
		t.Errorf("after b.txt changed: %d cached lines, want the 3 steps before COPY b.txt from the cache and 2 run:\n%s", n, stderr)
	}
	if r := fileIn(t, unpackRef(t, ref), "b.copy"); r.Size != int64(len("b changed\n")) {
		t.Errorf("b.copy has %d bytes after b.txt changed: the RUN did not see the new file", r.Size)
	}
}

func fileIn(t *testing.T, tree []treecmp.Record, path string) treecmp.Record {
	t.Helper()
	for _, r := range tree {
		if r.Path == path {
			return r
		}
	}
	t.Fatalf("%s is not in the image", path)
	return treecmp.Record{}
}

// TestBuildErrors checks that a build that cannot be done says why and
// where (the Dockerfile and its line, when there is one), exits non-zero,
// pushes nothing and leaves no mount of its own.
func TestBuildErrors(t *testing.T) {
	b := startBuildBench(t)
	dir := contextDir(t, "errors")
	df := func(name string) []string { return []string{"-f", filepath.Join(dir, name)} }
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown instruction", df("Dockerfile.unknown"), []string{"Dockerfile.unknown:3", "unknown instruction", "FROBNICATE"}},
		{"missing context file", df("Dockerfile.missing"), []string{"Dockerfile.missing:4", "not-in-the-context.txt"}},
		{"failing RUN", df("Dockerfile.fail"), []string{"about to fail", "Dockerfile.fail:4", "exit 3", "status 3"}},
		{"unknown stage", append(df("Dockerfile.stages"), "--target", "nosuch"), []string{`"nosuch"`, "not found"}},
		{"build-arg without a name", append(df("Dockerfile.stages"), "--build-arg", "=oops"), []string{`"=oops"`}},
		{"build-arg with a space", append(df("Dockerfile.stages"), "--build-arg", "TWO WORDS=1"), []string{`"TWO WORDS=1"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref := shared.reg.Ref("build-errors", strings.ReplaceAll(c.name, " ", "-"))
			_, stderr, err := b.build(t, dir, append(c.args, "-t", ref, "--push")...)
			t.Logf("strata build said:\n%s", stderr)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Errorf("strata build: %v, want a non-zero exit status\n%s", err, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("the message does not say %q:\n%s", w, stderr)
				}
			}
			if hasManifest(t, ref) {
				t.Errorf("a failed build pushed %s", ref)
			}
			if m, _ := kmount.Under(filepath.Join(b.d.cfg.Root, "build")); len(m) > 0 {
				t.Errorf("the failed build left mounts: %v", m)
			}
		})
	}
}

// TestBuildLazyOnBigBase builds FROM a base with a 200 MiB layer, with
// steps that read a few small parts of it, and pushes the result: the
// registry must send under 10% of the base. containerd then pulls the
// image whole (overlayfs, no Strata) and runs it.
func TestBuildLazyOnBigBase(t *testing.T) {
	e := startCtdEnv(t)
	busybox, err := fixture.Busybox()
	must(t, err)
	big := fixture.Big(200)
	base, size := e.pushImage(t, "build-big", append(big, busybox...), fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))
	if size < 200<<20 {
		t.Fatalf("the base is %d bytes, want ≥ 200 MiB", size)
	}
	ref := tagged(base, "built")
	e.proxy.ResetStats()
	out := e.mustCLI(t, "build", "--build-arg", "BASE="+base, "--build-arg", "BIG=/"+fixture.BigFile, "-t", ref, "--push", contextDir(t, "lazy"))
	st := e.proxy.Stats()
	t.Logf("build and push moved %d blob bytes in %d requests of a %d-byte base (%.2f%%)",
		st.BlobBytes, st.BlobRequests, size, 100*float64(st.BlobBytes)/float64(size))
	if st.BlobBytes*10 >= size {
		t.Errorf("build and push moved %d blob bytes of a %d-byte base, want under 10%%\n%s", st.BlobBytes, size, out)
		for _, r := range st.Log {
			if r.Blob && r.Bytes > 0 {
				t.Logf("%s %s %s: %d bytes", r.Method, r.Path, r.Range, r.Bytes)
			}
		}
	}

	direct := strings.Replace(ref, e.proxy.Host(), e.reg.Host(), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := e.ctd.Ctr(ctx, "images", "pull", "--plain-http", direct); err != nil {
		t.Fatalf("ctr pull: %v\n%s", err, out)
	}
	got, err := e.ctd.Ctr(ctx, "run", "--rm", "--snapshotter", "overlayfs", direct, "build-lazy")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, got)
	}
	want := sha256Of(io.LimitReader(fileOf(big[0], fixture.BigFile).Reader(), 4096)) + "  -\n" +
		sumLines(big[0], "small/a/4k.bin")[:64] + "  -\n" + "built by strata\n"
	if got != want {
		t.Errorf("the built image printed\n%s\nwant\n%s", got, want)
	}
}
