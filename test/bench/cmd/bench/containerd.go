package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/stratafs/strata/test/containerd"
)

// ctdNamespace is the containerd namespace the comparison pulls into.
const ctdNamespace = "bench"

// ctdProc is a private containerd whose every file lives under dir, so a
// cold run starts from an empty content store and snapshot tree.
type ctdProc struct {
	dir, address string
	proc         *daemonProc
}

func (c *ctdProc) logPath() string { return filepath.Join(c.dir, "containerd.log") }

// startContainerd writes the config and starts containerd, waiting at most
// 30 s until it answers `ctr version`.
func startContainerd(ctx context.Context, dir string, plugins map[string]string) (*ctdProc, error) {
	c := &ctdProc{dir: dir, address: filepath.Join(dir, "c.sock")}
	cfg := containerd.Config(dir, c.address, plugins)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc("containerd", []string{"--config", cfgPath, "--log-level", "warn"}, c.logPath())
	if err != nil {
		return nil, err
	}
	c.proc = p
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := c.ctr(ctx, "version"); err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			c.stop()
			return nil, fmt.Errorf("containerd not ready: %w; log: %s", ctx.Err(), tailFile(c.logPath()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ctr runs `ctr -a ADDRESS -n bench args...`, bounded to 5 minutes.
func (c *ctdProc) ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.address, "-n", ctdNamespace}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %v: %w\n%s", args, err, lastN(out, 2000))
	}
	return string(out), nil
}

// stop kills what is left of the containers (their shims detach into
// their own session, out of containerd's process group), then containerd.
// Mounts under dir are for resetDir to remove.
func (c *ctdProc) stop() {
	if c == nil {
		return
	}
	for _, pid := range containerd.ShimPIDs(c.address) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	c.proc.stop()
}

func lastN(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// waitSocket waits until path exists or the process exits, at most 30 s.
func waitSocket(ctx context.Context, p *daemonProc, path, logPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if exited(p.cmd.Process.Pid) {
			return fmt.Errorf("%s exited at start; log: %s", filepath.Base(p.cmd.Path), tailFile(logPath))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not served within 30s: %w; log: %s", path, ctx.Err(), tailFile(logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// exited tells whether the child pid is gone or a zombie: it is not
// waited for until stop, so kill(pid, 0) alone would still succeed.
func exited(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}
