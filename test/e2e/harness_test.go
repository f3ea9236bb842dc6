package e2e

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests mount FUSE and overlayfs: run as root (make test does)")
	}
}

// logBuffer collects the daemon's log lines so tests can check that a
// failure's cause was logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

var (
	logsOnce sync.Once
	logs     = &logBuffer{}
)

// captureLogs routes slog (the daemon logs through it) into logs, and
// echoes it to the test output on failure.
func captureLogs(t *testing.T) {
	logsOnce.Do(func() {
		slog.SetDefault(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	})
	start := len(logs.String())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String()[start:])
		}
	})
}

// testDaemon is a strata daemon running in this process.
type testDaemon struct {
	cfg    daemon.Config
	client *daemon.Client
}

// startDaemon runs a daemon with its own state root until the test ends.
func startDaemon(t *testing.T, tweak func(*daemon.Config)) *testDaemon {
	t.Helper()
	requireRoot(t)
	captureLogs(t)
	cfg := daemon.DefaultConfig()
	cfg.Root = t.TempDir()
	sockDir, err := os.MkdirTemp("", "strata-sock-") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg.Socket = filepath.Join(sockDir, "s.sock")
	cfg.ContainerdSocket = filepath.Join(sockDir, "c.sock")
	if tweak != nil {
		tweak(&cfg)
	}
	t.Cleanup(runDaemon(t, cfg))
	return &testDaemon{cfg: cfg, client: daemon.NewClient(cfg.Socket)}
}

// runDaemon runs a daemon with cfg until the returned stop is called.
func runDaemon(t *testing.T, cfg daemon.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg, ready) }()
	stop = func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("daemon did not stop within 30s")
		}
		// Last resort, so a failed test never leaks a mount.
		kmount.ClearStale(cfg.Root, nil)
	}
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited at start: %v", err)
	case <-time.After(30 * time.Second):
		stop()
		t.Fatal("daemon not ready within 30s")
	}
	return stop
}

// mount mounts ref and unmounts it when the test ends.
func (d *testDaemon) mount(t *testing.T, ref string) (string, *daemon.Mount) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir})
	if err != nil {
		t.Fatalf("mount %s: %v", ref, err)
	}
	t.Cleanup(func() {
		if err := d.client.Unmount(context.Background(), dir, false); err != nil && !strings.Contains(err.Error(), "no image mounted") {
			t.Errorf("unmount %s: %v", dir, err)
		}
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	return dir, m
}

// push builds layers in form and pushes them to reg as repo:tag.
func push(t *testing.T, reg *registry.Registry, repo, tag string, layers []fixture.LayerSpec, form fixture.Form, opts ...fixture.Option) string {
	t.Helper()
	ctx := context.Background()
	img, err := fixture.Build(ctx, layers, form, append([]fixture.Option{fixture.WithTempDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatalf("building %s: %v", repo, err)
	}
	ref := reg.Ref(repo, tag)
	if _, err := fixture.Push(ctx, img, ref); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref
}

// readErrno reads path whole and returns the errno it failed with, or 0.
func readErrno(path string) (unix.Errno, []byte) {
	b, err := os.ReadFile(path)
	var en unix.Errno
	if errors.As(err, &en) {
		return en, nil
	}
	if err != nil {
		return unix.EPERM, nil
	}
	return 0, b
}
