package run

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A run's state directory records who owns it, so that what a run killed
// with SIGKILL leaves (its runtime may go on running the container, whose
// parent is gone) can be found and ended later: see Sweep.
const (
	ownerFile   = "owner"        // "PID STARTTIME" of the process that called Run
	runtimeFile = "runtime"      // the runtime binary
	targetsFile = "targets.json" // the mount targets made in the rootfs (savedTargets)
)

// writeOwner records this process and the runtime in a run's state dir.
func writeOwner(stateDir, rt string) error {
	if err := os.WriteFile(filepath.Join(stateDir, runtimeFile), []byte(rt), 0o600); err != nil {
		return err
	}
	return MarkOwner(stateDir)
}

// MarkOwner records this process as the owner of dir (pid and start time,
// so that a reused pid is not taken for it); Abandoned tells later
// whether it died. A build marks its working directory so.
func MarkOwner(dir string) error {
	start, err := processStart(os.Getpid())
	if err != nil {
		return err
	}
	// Written whole under another name, then renamed: a sweep reading it
	// meanwhile must never see it empty.
	tmp := filepath.Join(dir, ownerFile+".new")
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d", os.Getpid(), start), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, ownerFile))
}

// Abandoned reports whether dir was left by a process that died: the
// owner MarkOwner recorded no longer runs, or it has none (or one that
// does not read) and was made over a minute ago. An owner is marked right
// after its directory is made, so one without, made a moment ago, is
// another process's in the making, not a dead one's.
func Abandoned(dir string) bool {
	// The owner is read once: read twice, it could be missing the first
	// time and there the second, and a live build taken for a dead one.
	pid, start, err := readOwner(dir)
	if err != nil {
		return !isYoung(dir)
	}
	return !alive(pid, start)
}

// processStart is the start time of process pid, in clock ticks since
// boot (/proc/PID/stat field 22): with the pid it names one process, even
// after the pid is reused.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	if fields[0] == "Z" || fields[0] == "X" {
		// Dead, not yet reaped (where init does not reap, a killed
		// process may stay a zombie for good).
		return 0, fmt.Errorf("process %d is dead", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// alive reports whether process pid, started at start, runs.
func alive(pid int, start uint64) bool {
	now, err := processStart(pid)
	return err == nil && now == start
}

// readOwner reads what MarkOwner wrote in dir.
func readOwner(dir string) (pid int, start uint64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return 0, 0, err
	}
	_, err = fmt.Sscanf(string(b), "%d %d", &pid, &start)
	return pid, start, err
}

// Sweep ends what runs under stateDir (Options.StateDir) left behind when
// the process that ran them died (SIGKILL, a crash): their containers are
// killed and deleted, their state directories removed. Runs whose owner
// is alive are left alone; the mount targets the dead ones made in their
// rootfs (saved in their state dir) are taken away as the run would have.
// It returns the IDs it swept.
func Sweep(stateDir string) ([]string, error) {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var swept []string
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "strata-run-") {
			continue
		}
		dir := filepath.Join(stateDir, e.Name())
		if !Abandoned(dir) {
			continue
		}
		removed, err := sweepRun(dir)
		if err != nil {
			errs = append(errs, err)
		}
		if removed {
			swept = append(swept, e.Name())
		}
	}
	return swept, errors.Join(errs...)
}

// sweepRun ends the abandoned run whose state directory is dir: its
// container is killed and deleted, the mount targets it made in its rootfs
// are taken away, and dir is removed (removed says it was, even when
// taking the targets away failed).
func sweepRun(dir string) (removed bool, err error) {
	id := filepath.Base(dir)
	if rt, err := os.ReadFile(filepath.Join(dir, runtimeFile)); err == nil {
		// delete --force kills a container that still runs.
		c := &container{rt: string(rt), id: id, stateDir: dir}
		if err := c.delete(); err != nil {
			return false, err
		}
	}
	var errs []error
	if err := cleanupSaved(filepath.Join(dir, targetsFile)); err != nil {
		errs = append(errs, fmt.Errorf("run %s: taking its mount targets away: %w", id, err))
	}
	if err := os.RemoveAll(dir); err != nil {
		return false, errors.Join(append(errs, err)...)
	}
	return true, errors.Join(errs...)
}

// isYoung reports whether dir was made less than a minute ago.
func isYoung(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && time.Since(fi.ModTime()) < time.Minute
}

// HoldLock takes a writable mount's run lock file (the daemon's
// RunInfo.LockFile) for as long as a command runs there, exclusively:
// runs of one mount go one at a time (each makes, and takes away, the
// mount targets of its container — /proc, /dev, /etc/hosts — in the same
// tree), and a commit, which takes it too, can tell that a run is in
// progress. When another run or a commit holds it, waiting is called once
// and HoldLock waits for it, until ctx ends. Call the returned function
// when the command has ended; the kernel drops the lock if this process
// dies.
func HoldLock(ctx context.Context, path string, waiting func()) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	for told := false; ; {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("run lock %s: %w", path, err)
		}
		if !told && waiting != nil {
			waiting()
		}
		told = true
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
