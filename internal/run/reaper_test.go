package run

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestReap: the reaper sweeps a run only when its caller is dead and the
// run still there; it never touches a directory that is not a run's, nor
// a live caller's run. (The reaper's whole life, SIGKILL of the caller
// and the container ended, is in cmd/strata's commit and build scripts.)
func TestReap(t *testing.T) {
	parent := t.TempDir()
	mk := func(name string) string {
		d := filepath.Join(parent, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	if err := reap(filepath.Join(parent, "strata-run-gone"), 0); err != nil {
		t.Errorf("a run that ended normally: %v", err)
	}
	other := mk("elsewhere")
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	deadOwner := fmt.Appendf(nil, "%d %d", cmd.Process.Pid, 1)
	if err := os.WriteFile(filepath.Join(other, ownerFile), deadOwner, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := reap(other, 0); err == nil {
		t.Error("a directory that is not a run's state directory is reaped")
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a directory that is not a run's is touched: %v", err)
	}
	live := mk("strata-run-live")
	if err := MarkOwner(live); err != nil {
		t.Fatal(err)
	}
	if err := reap(live, 50*time.Millisecond); err == nil {
		t.Error("the run of a live caller is reaped without a word")
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the run of a live caller is swept: %v", err)
	}
	dead := mk("strata-run-dead")
	if err := os.WriteFile(filepath.Join(dead, ownerFile), deadOwner, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := reap(dead, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the run of a dead caller is left: %v", err)
	}
}

// TestReaperMainOnlyForItsArguments: a command line that is not a
// reaper's is left to the program.
func TestReaperMainOnlyForItsArguments(t *testing.T) {
	for _, args := range [][]string{nil, {"run"}, {reaperArg}, {reaperArg, "a", "b"}, {"build", reaperArg}} {
		if _, ok := ReaperMain(args); ok {
			t.Errorf("ReaperMain(%q) took it for a reaper's", args)
		}
	}
}
