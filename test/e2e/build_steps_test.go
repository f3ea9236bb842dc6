package e2e

// The build tests that follow a build's steps: secrets, the cache, errors,
// and laziness on a big base.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

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
		{"stage defined later", df("Dockerfile.later"), []string{"Dockerfile.later:3", `cannot copy from stage "later", it needs to be defined before current stage "first"`}},
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
	// The steps before a failing one are cached, as BuildKit caches them:
	// run again, the build starts at the step that failed.
	for range 2 {
		_, stderr, err := b.build(t, dir, df("Dockerfile.fail")...)
		if err == nil {
			t.Fatalf("the failing build succeeded:\n%s", stderr)
		}
		if n := strings.Count(stderr, "  cached: "); n != 1 {
			t.Errorf("a failing build run again took %d steps from the cache, want the 1 before the failing RUN:\n%s", n, stderr)
		}
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

	runBuiltLazy(t, e, strings.Replace(ref, e.proxy.Host(), e.reg.Host(), 1), big, "build-lazy")
}

// runBuiltLazy pulls ref, an image built from testdata/build/lazy on a
// base with the layers big, whole into containerd (overlayfs, no Strata;
// pullFlags add to `ctr images pull`, e.g. --user) and checks what its
// command prints.
func runBuiltLazy(t *testing.T, e *ctdEnv, direct string, big []fixture.LayerSpec, id string, pullFlags ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pull := append(append([]string{"images", "pull", "--plain-http"}, pullFlags...), direct)
	if out, err := e.ctd.Ctr(ctx, pull...); err != nil {
		t.Fatalf("ctr pull: %v\n%s", err, out)
	}
	got, err := e.ctd.Ctr(ctx, "run", "--rm", "--snapshotter", "overlayfs", direct, id)
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, got)
	}
	want := sha256Of(io.LimitReader(fileOf(big[0], fixture.BigFile).Reader(), 4096)) + "  -\n" +
		sumLines(big[0], "small/a/4k.bin")[:64] + "  -\n" + "built by strata\n"
	if got != want {
		t.Errorf("the built image printed\n%s\nwant\n%s", got, want)
	}
}

// TestBuildRunsBaseImageTriggers builds an image whose config carries
// ONBUILD triggers, then a Dockerfile FROM it: the triggers run first,
// reading the child's build context, and the child's config keeps none.
// A base whose trigger is no instruction a trigger may be is refused at
// the FROM line, and nothing is pushed.
func TestBuildRunsBaseImageTriggers(t *testing.T) {
	b := startBuildBench(t)
	parentDir := contextDir(t, "onbuild")
	parent := shared.reg.Ref("build-onbuild", "parent")
	b.mustBuild(t, parentDir, "-f", filepath.Join(parentDir, "Dockerfile.parent"), "-t", parent, "--push")
	if got := configOf(t, parent).OnBuild; len(got) != 3 {
		t.Fatalf("the parent's config has triggers %q, want its 3 ONBUILD lines", got)
	}

	childDir := contextDir(t, "onbuild")
	must(t, os.WriteFile(filepath.Join(childDir, "note.txt"), []byte("from the child's context\n"), 0o644))
	child := shared.reg.Ref("build-onbuild", "child")
	_, log := b.mustBuild(t, childDir, "-f", filepath.Join(childDir, "Dockerfile.child"), "--build-arg", "PARENT="+parent, "-t", child, "--push")
	for _, w := range []string{"ONBUILD COPY note.txt", "ONBUILD RUN cat", "ONBUILD LABEL"} {
		if !strings.Contains(log, w) {
			t.Errorf("the build log does not show the trigger %q:\n%s", w, log)
		}
	}
	// Every step line counts the triggers in its total, the FROM's too.
	totals := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^STEP \d+/(\d+)`).FindAllStringSubmatch(log, -1) {
		totals[m[1]] = true
	}
	if len(totals) != 1 {
		t.Errorf("the step lines give totals %v, want one:\n%s", totals, log)
	}
	cfg := configOf(t, child)
	if len(cfg.OnBuild) != 0 {
		t.Errorf("the child's config keeps the base's triggers %q", cfg.OnBuild)
	}
	if cfg.Labels["triggered"] != "yes" {
		t.Errorf("labels %v: the LABEL trigger did not apply", cfg.Labels)
	}
	_, root := unpackRefDir(t, child)
	for name, want := range map[string]string{
		"from-trigger/note.txt": "from the child's context\n",
		"trigger-ran.txt":       "from the child's context\n",
		"child.txt":             "child\n",
		"base.txt":              "base\n",
	} {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
	}

	t.Run("hostile trigger", func(t *testing.T) {
		layers, err := fixture.Busybox()
		must(t, err)
		cfg := fixture.BusyboxConfig()
		cfg.OnBuild = []string{"RUN true", "FROM elsewhere"}
		bad := push(t, shared.reg, "build-onbuild", "hostile", layers, fixture.FormEStargz, fixture.WithConfig(cfg))
		ref := shared.reg.Ref("build-onbuild", "from-hostile")
		_, stderr, err := b.build(t, childDir, "-f", filepath.Join(childDir, "Dockerfile.child"), "--build-arg", "PARENT="+bad, "-t", ref, "--push")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Errorf("strata build FROM a base with a FROM trigger: %v, want a non-zero exit status\n%s", err, stderr)
		}
		for _, w := range []string{"Dockerfile.child:3", "ONBUILD trigger", "FROM elsewhere"} {
			if !strings.Contains(stderr, w) {
				t.Errorf("the message does not say %q:\n%s", w, stderr)
			}
		}
		if hasManifest(t, ref) {
			t.Errorf("a failed build pushed %s", ref)
		}
	})
}

// TestBuildInterrupted sends SIGINT to `strata build` while a RUN step runs
// a command that ignores it (the container's first process): the step is
// stopped at once and the build ends saying so, as docker build's first
// ^C does, leaving no container process and no mount; SIGTERM the same.
func TestBuildInterrupted(t *testing.T) {
	b := startBuildBench(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			// A sleep no other test runs, to find it.
			marker := fmt.Sprintf("sleep %d", 3000+int(sig))
			must(t, os.WriteFile(filepath.Join(dir, "Dockerfile"),
				[]byte("ARG BASE\nFROM $BASE\nRUN echo step-started; "+marker+"\n"), 0o644))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, b.bin, "build", "--socket", b.d.cfg.Socket, "--root", b.d.cfg.Root,
				"--build-arg", "BASE="+b.base, dir)
			var stderr logBuffer // read while the build writes it
			cmd.Stderr = &stderr
			must(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			started := false
			for range 600 {
				if strings.Contains(stderr.String(), "\nstep-started\n") {
					started = true
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if !started {
				cmd.Process.Kill()
				<-exited
				t.Fatalf("the RUN step did not start within a minute:\n%s", stderr.String())
			}
			must(t, cmd.Process.Signal(sig))
			select {
			case err := <-exited:
				if err == nil {
					t.Errorf("the interrupted build succeeded:\n%s", stderr.String())
				}
			case <-time.After(time.Minute):
				// The step's command would take 50 minutes.
				cmd.Process.Kill()
				<-exited
				t.Fatalf("a minute after %v the build still waited for its step:\n%s", sig, stderr.String())
			}
			if !strings.Contains(stderr.String(), "the build was interrupted") {
				t.Errorf("the message does not say the build was interrupted:\n%s", stderr.String())
			}
			// The container is killed before the build ends; its processes
			// may take a moment to be gone.
			var left []byte
			for i := range 100 {
				if left, _ = exec.Command("pgrep", "-f", marker).Output(); len(left) == 0 {
					if i > 0 {
						t.Logf("the step's processes were gone %d ms after the build ended", i*100)
					}
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if len(left) > 0 {
				exec.Command("pkill", "-9", "-f", marker).Run()
				t.Errorf("the step's command is still running 10 s after the build ended: pids %s", left)
			}
			if m, _ := kmount.Under(filepath.Join(b.d.cfg.Root, "build")); len(m) > 0 {
				t.Errorf("the interrupted build left mounts: %v", m)
			}
		})
	}
}
