package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/kmount"
	tcontainerd "github.com/stratafs/strata/test/containerd"
	"github.com/stratafs/strata/test/proc"
	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/registry"
)

// ctdEnv is the containerd test bench: docker-registry behind the
// counting proxy, `strata daemon` as a real child process (so it can be
// SIGKILLed), and containerd with strata as its proxy snapshotter.
type ctdEnv struct {
	reg   *registry.Registry
	proxy *proxy.Proxy
	bin   string // the strata binary
	root  string // the daemon's state root
	cfg   string // the daemon's config file
	sock  string // the daemon's containerd socket
	// control is the daemon's control socket (the CLI's).
	control string
	ctd     *tcontainerd.Containerd
	// dockerConfig is the daemon's DOCKER_CONFIG directory, empty unless
	// a test writes a config.json with credentials there: the daemon
	// reads it at every registry request, never the host's.
	dockerConfig string

	daemon *exec.Cmd
	exited <-chan struct{}
}

// built is the strata binary the package's tests run, built once (a link
// of cmd/strata takes seconds, and a dozen tests run it).
var built struct {
	once sync.Once
	dir  string
	bin  string
	out  []byte
	err  error
}

// buildStrata returns the strata binary, built on first use into a
// directory runMain removes at the end. Tests never change it.
func buildStrata(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "strata-e2e-bin-"); built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "strata")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		built.out, built.err = exec.CommandContext(ctx, "go", "build", "-o", built.bin, "github.com/stratafs/strata/cmd/strata").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.bin
}

// startCtdEnv starts the whole bench; everything stops at the test's end.
func startCtdEnv(t *testing.T) *ctdEnv {
	t.Helper()
	requireRoot(t)
	e := &ctdEnv{bin: buildStrata(t), root: t.TempDir()}
	// Runs last but for the removal of root: whatever is still mounted
	// there after everything stopped is detached, so that the removal
	// cannot fail on a dead FUSE mount.
	t.Cleanup(func() {
		if late, _ := kmount.Under(e.root); len(late) > 0 {
			t.Logf("mounts under the daemon's root after every process stopped: %+v", late)
			kmount.ClearStale(e.root, nil)
		}
	})
	e.reg = registry.Start(t)
	px, err := proxy.New(e.reg.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	e.proxy = px
	sockDir, err := os.MkdirTemp("/tmp", "strata-ctd-") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.sock = filepath.Join(sockDir, "containerd.sock")
	e.dockerConfig = filepath.Join(e.root, "docker")
	if err := os.Mkdir(e.dockerConfig, 0o700); err != nil {
		t.Fatal(err)
	}
	e.cfg = filepath.Join(e.root, "config.toml")
	e.control = filepath.Join(sockDir, "s.sock")
	cfg := fmt.Sprintf("root = %q\nsocket = %q\ncontainerd_socket = %q\n", e.root, e.control, e.sock)
	if err := os.WriteFile(e.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.startDaemon(t)
	t.Cleanup(func() { e.stopDaemon(t, syscall.SIGTERM) })
	// Registered after the daemon's cleanup, so it runs first: containers
	// and their overlays go before the layers under them.
	e.ctd = tcontainerd.Start(t, e.sock)
	return e
}

// startDaemon runs `strata daemon` and waits for its containerd socket.
func (e *ctdEnv) startDaemon(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.root, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(e.bin, "daemon", "--config", e.cfg)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+e.dockerConfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	exited, err := proc.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	e.daemon, e.exited = cmd, exited
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(e.sock); err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("strata daemon exited at start:\n%s", e.daemonLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("strata daemon did not serve %s within 30s:\n%s", e.sock, e.daemonLog())
}

// stopDaemon signals the daemon and waits for it (SIGKILL after 20 s);
// after a SIGTERM nothing of it may stay mounted.
func (e *ctdEnv) stopDaemon(t *testing.T, sig syscall.Signal) {
	t.Helper()
	select {
	case <-e.exited:
		// It ended before it was asked to: whatever it had mounted is
		// dead (ENOTCONN). Say so, and clear it.
		if stale, _ := kmount.ClearStale(e.root, nil); len(stale) > 0 {
			t.Errorf("strata daemon had exited (%v) before the test stopped it, leaving %d mounts", e.daemon.ProcessState, len(stale))
		}
		return
	default:
	}
	syscall.Kill(-e.daemon.Process.Pid, sig)
	select {
	case <-e.exited:
	case <-time.After(20 * time.Second):
		t.Errorf("strata daemon ignored %v for 20s; killing it", sig)
		syscall.Kill(-e.daemon.Process.Pid, syscall.SIGKILL)
		<-e.exited
	}
	if t.Failed() {
		t.Logf("strata daemon log:\n%s", e.daemonLog())
	}
	if sig != syscall.SIGKILL {
		// Whatever a crash or a failed test left, never leak a mount.
		stale, _ := kmount.ClearStale(e.root, nil)
		if len(stale) > 0 && !t.Failed() {
			t.Errorf("mounts left after SIGTERM: %v", stale)
		}
	}
}

func (e *ctdEnv) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(e.root, "daemon.log"))
	if len(b) > 16<<10 {
		b = b[len(b)-16<<10:]
	}
	return string(b)
}

// strata runs the strata CLI and returns its output.
func (e *ctdEnv) strata(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, e.bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("strata %v: %v\n%s\ndaemon log:\n%s", args, err, out, e.daemonLog())
	}
	return string(out)
}

// pull runs `strata pull` of ref into the bench's containerd.
func (e *ctdEnv) pull(t *testing.T, ref string) string {
	t.Helper()
	out := e.strata(t, "pull", "--containerd-address", e.ctd.Address, "--namespace", tcontainerd.Namespace, ref)
	t.Logf("strata pull %s:\n%s", ref, out)
	return out
}

// run runs script with busybox sh in a new container of ref, removed
// afterwards, and returns its output.
func (e *ctdEnv) run(t *testing.T, ref, id, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := e.ctd.Ctr(ctx, "run", "--rm", "--snapshotter", tcontainerd.Snapshotter, ref, id, "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("ctr run %s: %v\ndaemon log:\n%s", ref, err, e.daemonLog())
	}
	return out
}

// waitSnapshotter waits (at most 30 s) until containerd reaches the
// snapshotter again after a daemon restart: its gRPC connection backs off
// for up to 3 s between attempts.
func (e *ctdEnv) waitSnapshotter(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		if _, err = e.ctd.Ctr(ctx, "snapshots", "--snapshotter", tcontainerd.Snapshotter, "ls"); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("containerd cannot reach strata after restart: %v", errors.Join(err, ctx.Err()))
}

// layerMounts lists the daemon's FUSE layer mounts (the pool's, under
// root/l), not the binds of them in snapshot directories.
func (e *ctdEnv) layerMounts(t *testing.T) []string {
	t.Helper()
	mounts, err := kmount.Under(e.root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		if strings.HasPrefix(m.Target, filepath.Join(e.root, "l")+"/") && strings.HasPrefix(m.FSType, "fuse") {
			out = append(out, m.Target)
		}
	}
	return out
}
