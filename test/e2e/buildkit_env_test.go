package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/kmount"
	tcontainerd "github.com/stratafs/strata/test/containerd"
	"github.com/stratafs/strata/test/proc"
)

// buildKitModule is the module that pins the BuildKit release the tests
// run (its go.mod names buildkitd and buildctl as tools).
const buildKitModule = "../buildkit"

// buildKit returns buildkitd and buildctl of the pinned release, built
// once per machine: they are kept in the user's cache directory under a
// name derived from the module's go.sum and the Go version, so a warm
// machine builds nothing, and a change of either builds anew. A lock file
// keeps two test processes from building at once.
func buildKit(t *testing.T) (buildkitd, buildctl string) {
	t.Helper()
	sum, err := os.ReadFile(filepath.Join(buildKitModule, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	key := sha256.Sum256(append(sum, runtime.Version()...))
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "strata-test", "buildkit-"+hex.EncodeToString(key[:6]))
	buildkitd, buildctl = filepath.Join(dir, "buildkitd"), filepath.Join(dir, "buildctl")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if _, err := os.Stat(buildctl); err == nil {
		return buildkitd, buildctl
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp+"/",
		"github.com/moby/buildkit/cmd/buildkitd", "github.com/moby/buildkit/cmd/buildctl")
	cmd.Dir = buildKitModule
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building BuildKit (%s): %v\n%s", buildKitModule, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("built buildkitd and buildctl into %s in %s (once per machine)", dir, time.Since(start).Round(time.Second))
	return buildkitd, buildctl
}

// buildKitd is a running buildkitd with only its containerd worker, on
// the bench's containerd, with the snapshotter named "stargz": the name
// BuildKit takes its lazy path for, which containerd maps to Strata.
type buildKitd struct {
	ctl  string // buildctl
	addr string // unix://… of its gRPC socket
	dir  string
	log  string
}

// startBuildKitd starts buildkitd on e's containerd, its worker on
// snapshotter (tcontainerd.StargzName: Strata); it reaches e's registry
// and proxy, and the hosts given, over plain HTTP.
func startBuildKitd(t *testing.T, e *ctdEnv, snapshotter string, hosts ...string) *buildKitd {
	t.Helper()
	bkd, bctl := buildKit(t)
	// Socket paths must stay short.
	dir, err := os.MkdirTemp("/tmp", "bk-")
	if err != nil {
		t.Fatal(err)
	}
	b := &buildKitd{ctl: bctl, addr: "unix://" + filepath.Join(dir, "b.sock"), dir: dir, log: filepath.Join(dir, "buildkitd.log")}
	// The registries are plain HTTP on 127.0.0.1: the proxy, which the
	// base's reference names, and the registry itself.
	var cfg strings.Builder
	for _, h := range append([]string{e.proxy.Host(), e.reg.Host()}, hosts...) {
		fmt.Fprintf(&cfg, "[registry.%q]\n  http = true\n", h)
	}
	if err := os.WriteFile(filepath.Join(dir, "buildkitd.toml"), []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(b.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bkd, "--config", filepath.Join(dir, "buildkitd.toml"), "--root", filepath.Join(dir, "root"),
		"--addr", b.addr, "--oci-worker=false", "--containerd-worker=true",
		"--containerd-worker-addr", e.ctd.Address, "--containerd-worker-namespace", tcontainerd.Namespace,
		"--containerd-worker-snapshotter", snapshotter, "--containerd-worker-net", "host",
		"--containerd-worker-gc=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	// buildkitd's temporary mount points (buildkit-mount*) go with dir,
	// whatever state it is stopped in.
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "TMPDIR="+filepath.Join(dir, "tmp"))
	exited, err := proc.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("buildkitd log (last 8 KiB):\n%s", b.logTail())
		}
		// buildkitd's own mounts (its local content, none with the
		// containerd worker) never outlive it; a leftover is unmounted.
		if stale, _ := kmount.ClearStale(dir, nil); len(stale) > 0 {
			t.Errorf("mounts left by buildkitd: %v", stale)
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := b.buildctl(context.Background(), nil, "debug", "workers"); err == nil {
			return b
		}
		select {
		case <-exited:
			t.Fatalf("buildkitd exited at start:\n%s", b.logTail())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("buildkitd not ready within 60s:\n%s", b.logTail())
		}
	}
}

// buildctl runs buildctl with env added to the test's environment.
func (b *buildKitd) buildctl(ctx context.Context, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.ctl, append([]string{"--addr", b.addr}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("buildctl %v: %w\n%s", args, err, out)
	}
	return string(out), nil
}

func (b *buildKitd) logTail() string {
	out, _ := os.ReadFile(b.log)
	if len(out) > 8<<10 {
		out = out[len(out)-8<<10:]
	}
	return string(out)
}
