package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stratafs/strata/test/proc"
)

// Snapshotter is the name Strata's proxy plugin has in the config.
const Snapshotter = "strata"

// StargzName is the name of Strata's second snapshotter: BuildKit's
// containerd worker and nerdctl take their lazy-pull path (and send their
// remote snapshot labels) only for a snapshotter named "stargz". It has a
// socket of its own (StargzSocket): containerd's garbage collector, run per
// name, would remove one name's snapshots from a socket both names share.
const StargzName = "stargz"

// StargzSocket is where a Strata daemon serving its snapshots API on
// strataSocket serves the name "stargz" by default: "-stargz" before
// ".sock" (the daemon's Config.ContainerdStargzSocket; this package imports
// no Strata package).
func StargzSocket(strataSocket string) string {
	return strings.TrimSuffix(strataSocket, ".sock") + "-stargz.sock"
}

// Namespace is the containerd namespace tests should use.
const Namespace = "strata-test"

// configHead is containerd's version 2 config. CRI is off (it wants CNI
// and pulls a sandbox image from the network); so are snapshotters that
// probe the host's devices or filesystems. Proxy snapshotters follow.
const configHead = `version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`

// Config renders the config of a private containerd whose root, state and
// opt directories live under dir, serving gRPC on address, with one proxy
// snapshotter per entry of plugins (name → snapshots API socket). A proxy
// plugin whose socket is not up yet costs nothing: containerd dials it on
// first use.
func Config(dir, address string, plugins map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, configHead, filepath.Join(dir, "root"), filepath.Join(dir, "state"), address, address+".ttrpc", filepath.Join(dir, "opt"))
	for _, name := range slices.Sorted(maps.Keys(plugins)) {
		fmt.Fprintf(&b, "\n[proxy_plugins.%s]\n  type = \"snapshot\"\n  address = %q\n", name, plugins[name])
	}
	return b.String()
}

// Containerd is a running containerd.
type Containerd struct {
	// Dir holds everything of this instance: config, root, state, sockets.
	Dir string
	// Address is the gRPC socket, for `ctr -a` and containerd's client.
	Address string
	// Root is containerd's root (content store, metadata, snapshots).
	Root string

	cmd    *exec.Cmd
	exited <-chan struct{}
	logMu  sync.Mutex
	log    bytes.Buffer
	once   sync.Once
}

// Start installs containerd when missing, starts it with Strata's
// snapshots socket strataSocket as the proxy plugin "strata" (and its
// StargzSocket as "stargz", see StargzName), waits until
// it answers, and stops and cleans it up when the test ends.
func Start(t testing.TB, strataSocket string) *Containerd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := EnsureInstalled(ctx); err != nil {
		t.Fatalf("containerd: %v", err)
	}
	c, err := New(ctx, strataSocket)
	if err != nil {
		t.Fatalf("containerd: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (last 8 KiB):\n%s", lastBytes([]byte(c.Log()), 8<<10))
		}
		if err := c.Close(); err != nil {
			t.Errorf("containerd: %v", err)
		}
	})
	return c
}

// New is Start without a test: the caller must Close.
func New(ctx context.Context, strataSocket string) (*Containerd, error) {
	// Socket paths must fit in sockaddr_un's 108 bytes; t.TempDir paths
	// can be longer, so everything lives under a short /tmp directory.
	dir, err := os.MkdirTemp("/tmp", "ctd-")
	if err != nil {
		return nil, err
	}
	c := &Containerd{Dir: dir, Address: filepath.Join(dir, "c.sock"), Root: filepath.Join(dir, "root")}
	cfg := Config(dir, c.Address, map[string]string{Snapshotter: strataSocket, StargzName: StargzSocket(strataSocket)})
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c.cmd = exec.Command("containerd", "--config", cfgPath, "--log-level", "info")
	c.cmd.Stdout, c.cmd.Stderr = (*logWriter)(c), (*logWriter)(c)
	exited, err := proc.Start(c.cmd)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	c.exited = exited
	if err := c.waitReady(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

type logWriter Containerd

func (w *logWriter) Write(b []byte) (int, error) {
	w.logMu.Lock()
	defer w.logMu.Unlock()
	return w.log.Write(b)
}

// Log is containerd's output so far.
func (c *Containerd) Log() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.String()
}

// waitReady polls the socket for at most 30 s, failing at once if
// containerd exits (a bad config does that).
func (c *Containerd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.DialTimeout("unix", c.Address, time.Second); err == nil {
			conn.Close()
			// The socket answers before the plugins are loaded; ctr
			// version needs the version service, which comes last.
			if _, err := c.Ctr(ctx, "version"); err == nil {
				return nil
			}
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited at start:\n%s", lastBytes([]byte(c.Log()), 4000))
		case <-ctx.Done():
			return fmt.Errorf("containerd not ready on %s: %w\n%s", c.Address, ctx.Err(), lastBytes([]byte(c.Log()), 4000))
		case <-tick.C:
		}
	}
}

// CtrCommand is the command `ctr -a ADDRESS -n Namespace args...`, for
// callers that stream its output.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.Address, "-n", Namespace}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Ctr runs `ctr -a ADDRESS -n Namespace args...` and returns its combined
// output.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.Address, "-n", Namespace}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %v: %w\n%s", args, err, lastBytes(out, 4000))
	}
	return string(out), nil
}
