package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// Close stops the containers' tasks, their shims and containerd, unmounts
// what is left under Dir and removes it. It is safe to call more than once.
func (c *Containerd) Close() error {
	var err error
	c.once.Do(func() { err = c.close() })
	return err
}

func (c *Containerd) close() error {
	var errs []error
	c.killTasks()
	for _, pid := range c.shims() {
		// Shims detach into their own session, so the process group of
		// containerd does not reach them.
		syscall.Kill(pid, syscall.SIGKILL)
	}
	errs = append(errs, c.stop())
	errs = append(errs, unmountUnder(c.Dir))
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
	}
	return errors.Join(errs...)
}

// killTasks kills and deletes the tasks still running, so that their
// rootfs mounts go and their cgroups are removed by runc.
func (c *Containerd) killTasks() {
	select {
	case <-c.exited:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := c.Ctr(ctx, "tasks", "ls", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
		c.Ctr(ctx, "tasks", "delete", "-f", id)
		c.Ctr(ctx, "containers", "delete", id)
	}
}

// shims lists the pids of shims started by this containerd.
func (c *Containerd) shims() []int { return ShimPIDs(c.Address) }

// ShimPIDs lists the pids of the shims started by the containerd serving
// on address: their command line names that socket after -address. Shims
// leave containerd's process group, so stopping containerd misses them.
func ShimPIDs(address string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		for i := 0; i+1 < len(args); i++ {
			if string(args[i]) == "-address" && string(args[i+1]) == address {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// stop sends SIGTERM to containerd's process group, then SIGKILL after 10 s.
func (c *Containerd) stop() error {
	pgid := c.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-c.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-c.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("containerd (pid %d) did not exit after SIGKILL", pgid)
	}
}

// unmountUnder lazily detaches every mount at or below dir, deepest first,
// so that RemoveAll can never walk into a mounted filesystem.
func unmountUnder(dir string) error {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return err
	}
	targets := make([]string, 0, len(infos))
	for _, in := range infos {
		targets = append(targets, in.Mountpoint)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(targets)))
	var errs []error
	for _, t := range targets {
		if err := syscall.Unmount(t, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}
