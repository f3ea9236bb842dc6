package run

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// findRuntime resolves Options.Runtime: a path is taken as is, a name is
// looked up in PATH; "" is runc, or crun when runc is missing.
func findRuntime(name string) (string, error) {
	candidates := []string{name}
	if name == "" {
		candidates = []string{"runc", "crun"}
	}
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p, nil
		}
	}
	if name == "" {
		return "", fmt.Errorf("run: %w", ErrNoRuntime)
	}
	return "", fmt.Errorf("run: %w (%q is not an executable in PATH)", ErrNoRuntime, name)
}

// isCrun tells crun (which takes --console-socket in the foreground) from
// runc and runtimes like it, by what `RUNTIME --version` says first.
func isCrun(rt string) bool {
	if v, ok := flavours.Load(rt); ok {
		return v.(bool)
	}
	out, _ := exec.Command(rt, "--version").Output()
	crun := bytes.HasPrefix(out, []byte("crun "))
	flavours.Store(rt, crun)
	return crun
}

var flavours sync.Map // runtime path -> isCrun

// container is one run of the runtime.
type container struct {
	rt       string // the runtime binary
	id       string
	stateDir string // holds the runtime's --root and its log
	bundle   string
	opts     *Options
}

// cleanupTimeout bounds kill and delete after the run, which must happen
// even when ctx is already cancelled.
const cleanupTimeout = 30 * time.Second

func (c *container) runtime(ctx context.Context, args ...string) *exec.Cmd {
	global := []string{"--root", filepath.Join(c.stateDir, "state"),
		"--log", filepath.Join(c.stateDir, "runtime.log"), "--log-format", "json"}
	args = append(global, args...)
	if isCrun(c.rt) && hybridWithControllers() {
		if unshare, err := exec.LookPath("unshare"); err == nil {
			// crun (1.8, Debian 12) refuses every container on a host
			// whose cgroups are hybrid with controllers enabled in the
			// cgroup2 tree ("cgroups in hybrid mode not supported"),
			// where runc uses cgroup v1. Run it where the cgroup2 mount
			// is not: in a mount namespace of its own, private, so the
			// host keeps its mounts; crun then uses cgroup v1 like runc.
			// Every call (run, kill, delete) goes the same way, so they
			// agree on where the container's cgroups are.
			script := `umount -l ` + unifiedCgroup + ` 2>/dev/null; exec "$0" "$@"`
			return exec.CommandContext(ctx, unshare, append([]string{"-m", "--propagation", "private", "sh", "-c", script, c.rt}, args...)...)
		}
	}
	return exec.CommandContext(ctx, c.rt, args...)
}

// unifiedCgroup is where hybrid-cgroup hosts mount the cgroup2 tree.
const unifiedCgroup = "/sys/fs/cgroup/unified"

// hybridWithControllers reports a hybrid cgroup host whose cgroup2 tree has
// controllers enabled.
func hybridWithControllers() bool {
	b, err := os.ReadFile(unifiedCgroup + "/cgroup.controllers")
	return err == nil && len(bytes.TrimSpace(b)) > 0
}

// run starts `RUNTIME run` in the foreground, relays signals, kills the
// container when ctx is cancelled, and deletes its state whatever happens.
func (c *container) run(ctx context.Context) (int, error) {
	var stdio *terminal
	var err error
	runArgs := []string{"run"}
	if c.opts.TTY {
		if stdio, err = openTerminal(c.opts, isCrun(c.rt), c.stateDir); err != nil {
			return -1, err
		}
		runArgs = append(runArgs, stdio.runArgs()...)
	}
	cmd := c.runtime(context.Background(), append(runArgs, "--bundle", c.bundle, c.id)...)
	if stdio != nil {
		stdio.attach(cmd)
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c.opts.Stdin, c.opts.Stdout, c.opts.Stderr
		// Its own process group: a terminal's ^C reaches the command once,
		// through Signals, not also through the runtime's own relaying.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.WaitDelay = 5 * time.Second // a Stdin that never ends must not hold up Wait
	}
	if err := cmd.Start(); err != nil {
		if stdio != nil {
			stdio.close()
		}
		return -1, fmt.Errorf("run: starting %s: %w", c.rt, err)
	}
	if stdio != nil {
		stdio.started()
	}
	done := make(chan struct{})
	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		c.relay(ctx, cmd, done)
	}()
	waitErr := cmd.Wait()
	close(done)
	<-relayed
	if ee := (*exec.ExitError)(nil); errors.As(waitErr, &ee) && cmd.SysProcAttr != nil && cmd.SysProcAttr.Setpgid {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			// The runtime was killed, maybe in the middle of starting the
			// container: its child can go on preparing the rootfs (making
			// mount targets) after the cleanup has taken ours away, and
			// leave them in the layer. The runtime's process group goes
			// first, and is waited for.
			endGroup(cmd.Process.Pid)
		}
	}
	if stdio != nil {
		stdio.finish()
	}
	delErr := c.delete()
	code, err := c.exitStatus(waitErr)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("run: %w", ctx.Err())
	}
	if err == nil && delErr != nil {
		err = delErr
	}
	return code, err
}

// relay sends each signal from Options.Signals to the container, and
// SIGKILL when ctx is cancelled, until done. The second signal asking the
// command to end kills it: a command that is the container's first
// process never gets a signal it has no handler for (the kernel drops
// it, as under docker run), so a ^C would otherwise change nothing.
func (c *container) relay(ctx context.Context, cmd *exec.Cmd, done <-chan struct{}) {
	cancelled := ctx.Done()
	asked := false
	for {
		select {
		case <-done:
			return
		case sig := <-c.opts.Signals:
			switch {
			case !endsCommand(sig):
				c.kill(cmd, sig)
			case asked:
				c.kill(cmd, syscall.SIGKILL)
			default:
				asked = true
				c.kill(cmd, sig)
			}
		case <-cancelled:
			cancelled = nil
			c.kill(cmd, syscall.SIGKILL)
		}
	}
}

// endsCommand says whether sig asks a command to end: the signals
// NotifySignals relays.
func endsCommand(sig os.Signal) bool {
	switch sig {
	case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT:
		return true
	}
	return false
}

// kill signals the container through the runtime. Before the container
// exists (or after it is gone) that fails; then the runtime process gets
// the signal, and a foreground runtime relays it to the command itself.
func (c *container) kill(cmd *exec.Cmd, sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := c.runtime(ctx, "kill", c.id, strconv.Itoa(int(s))).Run(); err != nil {
		_ = cmd.Process.Signal(s)
	}
}

// endGroup kills process group pgid and waits, for up to cleanupTimeout,
// until none of its processes runs (zombies aside: they can do nothing).
func endGroup(pgid int) {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil {
		return // ESRCH: nothing left
	}
	deadline := time.Now().Add(cleanupTimeout)
	for groupRuns(pgid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// groupRuns reports whether a process of group pgid runs (is no zombie).
func groupRuns(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	group := strconv.Itoa(pgid)
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and
		// parentheses, so the fields start after its last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 2 && f[2] == group && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// delete removes the container's runtime state. A foreground run deletes
// it itself when the command exits; this is for every other way out.
func (c *container) delete() error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := c.runtime(ctx, "delete", "--force", c.id)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if _, serr := os.Stat(filepath.Join(c.stateDir, "state", c.id)); errors.Is(serr, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("run: deleting container %s: %v: %s", c.id, err, strings.TrimSpace(out.String()))
}

// exitStatus turns the runtime's exit into the command's. A foreground
// runtime exits with the command's status (128+N for signal N); a status
// with an error in the runtime's log means the runtime failed instead, and
// the command may never have run.
func (c *container) exitStatus(waitErr error) (int, error) {
	if waitErr == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) {
		return -1, fmt.Errorf("run: %s: %w", filepath.Base(c.rt), waitErr)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, fmt.Errorf("run: %s was killed by %s", filepath.Base(c.rt), unix.SignalName(ws.Signal()))
	}
	if msgs := runtimeErrors(filepath.Join(c.stateDir, "runtime.log")); len(msgs) > 0 {
		return -1, fmt.Errorf("run: %s: %s", filepath.Base(c.rt), strings.Join(msgs, "; "))
	}
	return ee.ExitCode(), nil
}

// runtimeErrors reads the error-level lines of a runtime's JSON log (runc
// and crun write {"level":"error","msg":...}).
func runtimeErrors(logFile string) []string {
	f, err := os.Open(logFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var msgs []string
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		var entry struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Level == "error" && entry.Msg != "" {
			msgs = append(msgs, entry.Msg)
		}
	}
	return msgs
}
