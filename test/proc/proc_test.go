package proc

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestChildOutlivesLockedThreads starts a child, then makes the runtime
// retire threads the way starting other pinned children does (goroutines
// that lock their thread and exit): the child must keep running, and
// must stop when killed.
func TestChildOutlivesLockedThreads(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	exited, err := Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-exited })
	for range 50 {
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			close(done)
		}()
		<-done
	}
	select {
	case <-exited:
		t.Fatalf("the child died while other goroutines retired their threads: %v", cmd.ProcessState)
	case <-time.After(200 * time.Millisecond):
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the child did not stop on SIGTERM to its group")
	}
}
