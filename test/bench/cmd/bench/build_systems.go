package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// strataBuild is Strata's build path through its CLI, as a user runs it:
// `strata mount --rw` starts a daemon on a fresh state root (its start is
// in the timed part: buildah has no daemon), `strata run`, `strata commit`
// (eStargz layer, the default) to the registry.
type strataBuild struct {
	bin, dir  string
	daemonPID int
	mountArgs []string // more `strata mount` flags
}

func (s *strataBuild) Name() string { return bldStrata }
func (s *strataBuild) Tag() string  { return "estargz" }
func (s *strataBuild) mnt() string  { return filepath.Join(s.dir, "mnt") }
func (s *strataBuild) src() string  { return filepath.Join(s.dir, "src") }

// daemonArgs point every command at this run's daemon and state root.
func (s *strataBuild) daemonArgs() []string {
	return []string{"--socket", filepath.Join(s.dir, "strata.sock"), "--root", filepath.Join(s.dir, "root")}
}

func (s *strataBuild) Prepare(ctx context.Context) error { return os.MkdirAll(s.mnt(), 0o755) }

var startedDaemon = regexp.MustCompile(`started daemon \(pid (\d+)`)

func (s *strataBuild) From(ctx context.Context, ref string) error {
	args := append(append(append([]string{"mount"}, s.daemonArgs()...), s.mountArgs...), "--rw", "--insecure", ref, s.mnt())
	out, err := exec.CommandContext(ctx, s.bin, args...).CombinedOutput()
	if m := startedDaemon.FindSubmatch(out); m != nil {
		s.daemonPID, _ = strconv.Atoi(string(m[1]))
	}
	if err != nil {
		return fmt.Errorf("strata mount --rw: %w\n%s\ndaemon log: %s", err, lastN(out, 2000), s.daemonLog())
	}
	if s.daemonPID == 0 {
		return fmt.Errorf("strata mount --rw started no daemon of its own: %s", out)
	}
	return nil
}

func (s *strataBuild) daemonLog() string { return tailFile(filepath.Join(s.dir, "root", "daemon.log")) }

func (s *strataBuild) Run(ctx context.Context, step buildStep, cmd []string) error {
	args := append([]string{"run"}, s.daemonArgs()...)
	for _, e := range goEnv {
		args = append(args, "--env", e)
	}
	if step.Src {
		args = append(args, "--mount", "type=bind,source="+s.src()+",target=/src",
			"--mount", "type=tmpfs,target="+gocacheDir, "--workdir", "/src")
	}
	args = append(append(args, s.mnt(), "--"), cmd...)
	if err := run(ctx, s.bin, args...); err != nil {
		return fmt.Errorf("%w\ndaemon log: %s", err, s.daemonLog())
	}
	return nil
}

func (s *strataBuild) Commit(ctx context.Context, newRef string) error {
	args := append(append([]string{"commit"}, s.daemonArgs()...), "--insecure", "--quiet", s.mnt(), newRef)
	if err := run(ctx, s.bin, args...); err != nil {
		return fmt.Errorf("%w\ndaemon log: %s", err, s.daemonLog())
	}
	return nil
}

// Teardown drops the mount and stops the daemon the CLI started; the
// caller removes the state.
func (s *strataBuild) Teardown(ctx context.Context) error {
	var err error
	if isMountpoint(s.mnt()) {
		err = run(ctx, s.bin, append(append([]string{"umount"}, s.daemonArgs()...), "--discard", s.mnt())...)
	}
	if s.daemonPID > 0 {
		stopPID(s.daemonPID)
		s.daemonPID = 0
	}
	return err
}

// daemonCPU is the CPU time (user + system) the daemon has used so far:
// on a shared machine it says what Strata's FUSE serving costs, whatever
// the wall clock did.
func (s *strataBuild) daemonCPU() (float64, error) { return pidCPU(s.daemonPID) }

// Memory is the daemon's memory (see memoryReporter).
func (s *strataBuild) Memory() (rss, peak int64, err error) { return procMemory(s.daemonPID) }

// pidCPU is the CPU time a running process has used so far.
func pidCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return cpuSeconds(string(b))
}

// cpuSeconds reads utime + stime from a /proc/PID/stat line; the command
// name (field 2) may hold spaces, so fields are counted after its ')'.
func cpuSeconds(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// stopPID stops a process that is not our child (the CLI started it in a
// session of its own): SIGTERM, then SIGKILL after 15 s.
func stopPID(pid int) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 150; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// buildahSys is the baseline: apt's buildah with storage of its own under
// dir (overlay driver), chroot isolation, plain HTTP to the registry.
// `buildah from` pulls the gzip base whole; commit writes the new image to
// that storage and push sends it to the registry.
type buildahSys struct{ dir string }

func (b *buildahSys) Name() string { return bldBuildah }
func (b *buildahSys) Tag() string  { return "gzip" }
func (b *buildahSys) src() string  { return filepath.Join(b.dir, "src") }

const buildahCtr = "bench-step"

func (b *buildahSys) buildah(ctx context.Context, args ...string) error {
	return buildahIn(ctx, b.dir, args...)
}

// buildahIn runs buildah with its storage under dir/buildah.
func buildahIn(ctx context.Context, dir string, args ...string) error {
	global := []string{"--root", filepath.Join(dir, "buildah", "root"), "--runroot", filepath.Join(dir, "buildah", "runroot"),
		"--storage-driver", "overlay"}
	return run(ctx, "buildah", append(global, args...)...)
}

func (b *buildahSys) Prepare(ctx context.Context) error {
	return os.MkdirAll(filepath.Join(b.dir, "buildah"), 0o755)
}

func (b *buildahSys) From(ctx context.Context, ref string) error {
	return b.buildah(ctx, "from", "--quiet", "--tls-verify=false", "--name", buildahCtr, "docker://"+ref)
}

func (b *buildahSys) Run(ctx context.Context, step buildStep, cmd []string) error {
	args := []string{"run", "--isolation", "chroot"}
	for _, e := range goEnv {
		args = append(args, "--env", e)
	}
	if step.Src {
		args = append(args, "--mount", "type=bind,source="+b.src()+",destination=/src",
			"--mount", "type=tmpfs,destination="+gocacheDir, "--workingdir", "/src")
	}
	return b.buildah(ctx, append(append(args, buildahCtr, "--"), cmd...)...)
}

func (b *buildahSys) Commit(ctx context.Context, newRef string) error {
	if err := b.buildah(ctx, "commit", "--quiet", buildahCtr, "bench-built"); err != nil {
		return err
	}
	return b.buildah(ctx, "push", "--quiet", "--tls-verify=false", "bench-built", "docker://"+newRef)
}

// Teardown leaves the storage to the caller, which unmounts what is left
// under dir and removes it.
func (b *buildahSys) Teardown(ctx context.Context) error { return nil }
