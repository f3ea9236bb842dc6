package proc

import (
	"os/exec"
	"runtime"
	"syscall"
)

// Start starts cmd in a process group of its own (so that a signal to
// -pid reaches its children too), to be killed if the test process dies,
// and returns a channel closed once it has exited and been reaped
// (cmd.ProcessState is then set). cmd.SysProcAttr is replaced.
func Start(cmd *exec.Cmd) (exited <-chan struct{}, err error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread is retired with this goroutine,
		// after the child is reaped, and no other goroutine ever runs
		// on it, so nothing can end it earlier.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}
