package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
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

// bkBuild is the build of BuildKit's binaries. runMain starts it in the
// background, at the lowest CPU priority, when the run includes a test
// that needs them: on a machine that lacks them it builds while the other
// tests run (the BuildKit tests run last, see buildKitTests) instead of
// for minutes in front of the first one.
var bkBuild struct {
	once                      sync.Once
	done                      chan struct{}
	cancel                    context.CancelFunc
	buildkitd, buildctl, note string
	err                       error
}

// buildKitTests are the tests that need BuildKit's binaries.
var buildKitTests = []string{"TestBuildKitOnStrata", "TestBuildSameAsBuildKit"}

// buildKitSerial keeps the BuildKit tests, parallel to run last, one at a
// time.
var buildKitSerial sync.Mutex

func startBuildKitBuild() {
	bkBuild.once.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		bkBuild.cancel, bkBuild.done = cancel, make(chan struct{})
		go func() {
			defer close(bkBuild.done)
			bkBuild.buildkitd, bkBuild.buildctl, bkBuild.note, bkBuild.err = buildKitBinaries(ctx)
		}()
	})
}

// stopBuildKitBuild ends a build no test waited for.
func stopBuildKitBuild() {
	if bkBuild.cancel != nil {
		bkBuild.cancel()
		<-bkBuild.done
	}
}

// runsBuildKitTests says whether -test.run selects a BuildKit test.
func runsBuildKitTests() bool {
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		return false
	}
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	top, _, _ := strings.Cut(f.Value.String(), "/")
	re, err := regexp.Compile(top)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(buildKitTests, re.MatchString)
}

// buildKit returns buildkitd and buildctl of the pinned release, waiting
// for their build.
func buildKit(t *testing.T) (buildkitd, buildctl string) {
	t.Helper()
	startBuildKitBuild()
	<-bkBuild.done
	if bkBuild.err != nil {
		t.Fatal(bkBuild.err)
	}
	if bkBuild.note != "" {
		t.Log(bkBuild.note)
	}
	return bkBuild.buildkitd, bkBuild.buildctl
}

// buildKitBinaries builds buildkitd and buildctl once per machine: they
// are kept in the user's cache directory under a name derived from the
// module's go.sum and the Go version, so a warm machine builds nothing,
// and a change of either builds anew. A lock file keeps two test
// processes from building at once.
func buildKitBinaries(ctx context.Context) (buildkitd, buildctl, note string, err error) {
	sum, err := os.ReadFile(filepath.Join(buildKitModule, "go.sum"))
	if err != nil {
		return "", "", "", err
	}
	key := sha256.Sum256(append(sum, runtime.Version()...))
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", "", "", err
	}
	dir := filepath.Join(cache, "strata-test", "buildkit-"+hex.EncodeToString(key[:6]))
	buildkitd, buildctl = filepath.Join(dir, "buildkitd"), filepath.Join(dir, "buildctl")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", "", "", err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", "", "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", "", "", err
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if _, err := os.Stat(buildctl); err == nil {
		return buildkitd, buildctl, "", nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nice", "-n", "19", "go", "build", "-o", tmp+"/",
		"github.com/moby/buildkit/cmd/buildkitd", "github.com/moby/buildkit/cmd/buildctl")
	cmd.Dir = buildKitModule
	// Cancelled, the whole group goes: go build's compilers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", "", fmt.Errorf("building BuildKit (%s): %v\n%s", buildKitModule, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", "", "", err
	}
	return buildkitd, buildctl, fmt.Sprintf("built buildkitd and buildctl into %s in %s (once per machine)", dir, time.Since(start).Round(time.Second)), nil
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
