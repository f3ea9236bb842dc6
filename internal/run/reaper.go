package run

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// A run's reaper ends its container when the process that called Run dies
// without doing so (SIGKILL: a CI job cancelled, the OOM killer). The
// runtime runs the container in the foreground, but it cannot follow its
// caller's death: the container would run on, its bundle (an env secret
// in its config.json) kept, until the next run, commit, build or daemon
// start swept it (Sweep). So Run starts, next to the runtime, a second
// process of this same binary in a session of its own, holding the read end
// of a pipe whose write end only the caller has. When the caller ends, the
// kernel closes the pipe and the reaper wakes; if the caller died with its
// run still there, the reaper sweeps that run as Sweep would, at once. A
// caller that ends normally writes a byte into the pipe first: the reaper
// then does nothing. (The kernel closes a dying process's files before
// the process is reaped, so at the pipe's end a killed caller may still
// look alive for a moment: the reaper waits for it to be gone.) A reaper
// killed too (a whole cgroup at once) leaves the run to the next Sweep,
// as before.
//
// The reaper is this binary run again, through /proc/self/exe with the
// caller's argv[0] (a test binary playing strata dispatches on it), with
// reaperArg first: the program's main must hand such arguments to
// ReaperMain before anything else.

// reaperArg, as the first argument, makes a binary a run's reaper.
const reaperArg = "__run-reaper"

// reaperOn says Run starts reapers (EnableReaper).
var reaperOn atomic.Bool

// EnableReaper makes every later Run start a reaper for its run: this
// same binary, whose main calls ReaperMain first.
func EnableReaper() { reaperOn.Store(true) }

// ReaperMain runs the reaper when args (the program's arguments, without
// argv[0]) ask for one, and returns its exit status and true; otherwise it
// returns false at once.
func ReaperMain(args []string) (int, bool) {
	if len(args) != 2 || args[0] != reaperArg {
		return 0, false
	}
	// Wait for the caller to end: its end of the pipe closes with it,
	// after a byte when it ended normally.
	if n, _ := io.Copy(io.Discard, os.Stdin); n > 0 {
		return 0, true
	}
	if err := reap(args[1], reaperGone); err != nil {
		fmt.Fprintf(os.Stderr, "strata: ending a run whose strata process died: %v\n", err)
		return 1, true
	}
	return 0, true
}

// reaperGone bounds the wait for a caller whose pipe closed to be gone.
const reaperGone = 30 * time.Second

// reap sweeps the run in dir once its caller, whose end of the pipe
// closed without a word, is gone (within wait).
func reap(dir string, wait time.Duration) error {
	if !strings.HasPrefix(filepath.Base(dir), "strata-run-") {
		return fmt.Errorf("%s is not a run's state directory", dir)
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil // the run ended, or was swept, meanwhile
		}
		if Abandoned(dir) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: its strata process still runs %v after it let its reaper go", dir, wait)
		}
	}
	_, err := sweepRun(dir)
	return err
}

// reaperWait bounds how long Run waits for its reaper to see it end.
const reaperWait = 5 * time.Second

// startReaper starts the reaper of the run in stateDir (see above), when
// EnableReaper was called, and returns the function that lets it go once
// the run has been cleaned up.
func startReaper(stateDir string) (func(), error) {
	if !reaperOn.Load() {
		return func() {}, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("run: reaper: %w", err)
	}
	cmd := &exec.Cmd{
		Path:  "/proc/self/exe",
		Args:  []string{os.Args[0], reaperArg, stateDir},
		Stdin: r,
		// Not in the caller's directory, which may be in a mount an
		// unmount must not find busy.
		Dir: "/",
		// A session of its own: a signal to the caller's process group
		// (^C, a job control kill) does not reach it.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("run: starting its reaper: %w", err)
	}
	r.Close()
	return func() {
		w.Write([]byte{1}) //nolint:errcheck // a reaper gone already needs no word
		w.Close()
		done := make(chan struct{})
		go func() {
			cmd.Wait() //nolint:errcheck // it had nothing to do
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(reaperWait):
		}
	}, nil
}
