package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stratafs/strata/test/proc"
)

// system is one way of making an image's files available.
//
// Prepare resets the system to a cold state (no cached layer data) and
// starts whatever service it needs; it is not timed. Mount makes the image
// ref readable under the returned directory and is timed: it is "time to
// mount" for lazy systems and "pull + unpack" for the full-pull baseline.
// Teardown unmounts and removes all state.
type system interface {
	Name() string
	Tag() string // which form of the image it reads: "gzip" or "estargz"
	Prepare(ctx context.Context) error
	Mount(ctx context.Context, ref string) (string, error)
	Teardown(ctx context.Context) error
}

// daemonProc is a child process in its own process group, stopped with
// SIGTERM then SIGKILL.
type daemonProc struct {
	cmd  *exec.Cmd
	done <-chan struct{} // closed once it has exited and been reaped
}

func startProc(name string, args []string, logPath string) (*daemonProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	done, err := proc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &daemonProc{cmd: cmd, done: done}, nil
}

func (p *daemonProc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	stopGroup(p.cmd, p.done)
}

// stopGroup sends SIGTERM to cmd's process group, SIGKILL after 15 s, and
// waits for done (closed once cmd has been reaped).
func stopGroup(cmd *exec.Cmd, done <-chan struct{}) {
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// strataSys runs `strata daemon` with a fresh root per cold run and mounts
// with `strata mount`, exactly as a user would.
type strataSys struct {
	bin, dir string
	daemon   *daemonProc
	mnt      string
	// recorded: mount the copy of the image that carries a prefetch list
	// recorded from the workload (see runner.trainMount).
	recorded  bool
	plain     bool     // mount IMAGE:plain, eStargz without prefetch landmarks
	gzip      bool     // mount IMAGE:gzip, the unmodified image
	zstd      bool     // mount IMAGE:zstdchunked, its zstd:chunked form
	config    string   // the daemon's config file's content, when set
	mountArgs []string // more `strata mount` flags
}

func (s *strataSys) Name() string {
	switch {
	case s.gzip && s.config != "":
		return strataGzipStream
	case s.gzip && s.recorded:
		return strataGzipRec
	case s.zstd:
		return strataZstdChunked
	case s.gzip:
		return strataGzip
	case s.plain && s.recorded:
		return strataPlainRec
	case s.plain:
		return strataPlain
	case s.recorded:
		return strataRec
	}
	return "strata"
}

// strataRec is Strata mounting the copy of an image that carries a
// prefetch list recorded from the row's workload; strataPlain, the image
// converted without prefetch landmarks (`strata convert` with no
// --prioritize), and strataPlainRec, a copy of that one with a list.
//
// strataGzip mounts the plain gzip image every full pull reads, after an
// untimed `strata index` pushed its layers' indexes (issue 14);
// strataGzipStream mounts it with layer_indexes = "off": no index, so the
// mount reads each layer once to index it; strataGzipRec, a copy of the
// gzip image with its indexes and a prefetch list recorded from the
// workload.
const (
	strataGzip       = "strata-gzip"
	strataGzipStream = "strata-gzip-stream"
	strataGzipRec    = "strata-gzip-rec"
	// strataZstdChunked mounts the image's zstd:chunked form.
	strataZstdChunked = "strata-zstdchunked"
)

const (
	strataRec      = "strata-rec"
	strataPlain    = "strata-plain"
	strataPlainRec = "strata-plain-rec"
)

func (s *strataSys) Tag() string {
	if s.gzip {
		return "gzip"
	}
	if s.zstd {
		return zstdChunkedTag
	}
	return "estargz"
}

// Memory returns the daemon's VmRSS and VmHWM, as ps shows them.
func (s *strataSys) Memory() (rss, peak int64, err error) {
	if s.daemon == nil || s.daemon.cmd.Process == nil {
		return 0, 0, errors.New("no daemon")
	}
	return procMemory(s.daemon.cmd.Process.Pid)
}

// memoryReporter is a system whose daemon's memory the bench reports.
type memoryReporter interface {
	Memory() (rss, peak int64, err error)
}

// daemonMemory is sys's daemon's memory, zero when it has none.
func daemonMemory(sys system) (rss, peak int64) {
	if m, ok := sys.(memoryReporter); ok {
		rss, peak, _ = m.Memory()
	}
	return rss, peak
}

// procMemory reads VmRSS and VmHWM of process pid from /proc.
func procMemory(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			peak = n << 10
		}
	}
	return rss, peak, nil
}
func (s *strataSys) socket() string {
	return filepath.Join(s.dir, "strata.sock")
}

func (s *strataSys) Prepare(ctx context.Context) error {
	if err := resetDir(s.dir); err != nil {
		return err
	}
	root := filepath.Join(s.dir, "root")
	// The daemon alone, not under its supervisor: its RSS is what is measured.
	args := []string{"daemon", "--supervise=false", "--root", root, "--socket", s.socket()}
	if s.config != "" {
		cfg := filepath.Join(s.dir, "config.toml")
		if err := os.WriteFile(cfg, []byte(s.config), 0o644); err != nil {
			return err
		}
		args = append(args, "--config", cfg)
	}
	d, err := startProc(s.bin, args, filepath.Join(s.dir, "daemon.log"))
	if err != nil {
		return err
	}
	s.daemon = d
	for i := 0; i < 300; i++ { // 30 s
		if exec.CommandContext(ctx, s.bin, "ls", "--socket", s.socket()).Run() == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("strata daemon did not answer within 30s; log: %s", tailFile(filepath.Join(s.dir, "daemon.log")))
}

func (s *strataSys) Mount(ctx context.Context, ref string) (string, error) {
	s.mnt = filepath.Join(s.dir, "mnt")
	if err := os.MkdirAll(s.mnt, 0o755); err != nil {
		return "", err
	}
	args := append(append([]string{"mount", "--socket", s.socket()}, s.mountArgs...), "--insecure", ref, s.mnt)
	if err := run(ctx, s.bin, args...); err != nil {
		return "", fmt.Errorf("%w\ndaemon log: %s", err, tailFile(filepath.Join(s.dir, "daemon.log")))
	}
	return s.mnt, nil
}

func (s *strataSys) Teardown(ctx context.Context) error {
	var err error
	if s.mnt != "" && isMountpoint(s.mnt) {
		err = run(ctx, s.bin, "umount", "--socket", s.socket(), s.mnt)
	}
	s.daemon.stop()
	s.daemon, s.mnt = nil, ""
	return errors.Join(err, resetDir(s.dir))
}

// fullPull is the baseline without a lazy filesystem: skopeo copies the
// gzip image through the proxy, umoci unpacks it to local disk.
type fullPull struct{ dir string }

func (f *fullPull) Name() string                      { return "fullpull" }
func (f *fullPull) Tag() string                       { return "gzip" }
func (f *fullPull) Prepare(ctx context.Context) error { return resetDir(f.dir) }
func (f *fullPull) Teardown(ctx context.Context) error {
	return resetDir(f.dir)
}

func (f *fullPull) Mount(ctx context.Context, ref string) (string, error) {
	layout := filepath.Join(f.dir, "oci") + ":img"
	if err := run(ctx, "skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
		"docker://"+ref, "oci:"+layout); err != nil {
		return "", err
	}
	bundle := filepath.Join(f.dir, "bundle")
	if err := run(ctx, "umoci", "unpack", "--image", layout, bundle); err != nil {
		return "", err
	}
	return filepath.Join(bundle, "rootfs"), nil
}

// readySys mounts with another lazy filesystem through a bench-only
// program that prints "ready" once its mount is up (readyProc):
// stargz-snapshotter's FUSE filesystem (test/bench/stargz) or AWS's
// soci-snapshotter (test/bench/soci, see sociName).
type readySys struct {
	name, tag string
	bin, dir  string
	proc      *readyProc
}

func (s *readySys) Name() string                      { return s.name }
func (s *readySys) Tag() string                       { return s.tag }
func (s *readySys) Prepare(ctx context.Context) error { return resetDir(s.dir) }

func (s *readySys) Mount(ctx context.Context, ref string) (string, error) {
	mnt := filepath.Join(s.dir, "mnt")
	var err error
	s.proc, err = startReady(ctx, s.bin, []string{"--root", filepath.Join(s.dir, "state"), ref, mnt}, filepath.Join(s.dir, s.name+".log"))
	if err != nil {
		return "", err
	}
	return mnt, nil
}

func (s *readySys) Teardown(ctx context.Context) error {
	s.proc.stop()
	s.proc = nil
	return resetDir(s.dir)
}

// sociName is AWS's soci-snapshotter mounting the plain gzip image with
// its own index (issue 14's baseline), through the bench-only
// test/bench/soci program: its snapshotter with the default config, one
// FUSE mount per layer with a zTOC, merged by overlayfs. It reads
// IMAGE:gzip-soci, the gzip image as soci's `convert` leaves it (same
// layers, an image index binding the manifest to a SOCI index v2), pushed
// untimed by runner.indexSoci.
const sociName = "soci"

// readyProc is a bench-only mounter (stargz-bench, soci-bench) in its
// own process group: it prints "ready" once its mount is up, and
// unmounts everything on SIGTERM.
type readyProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been reaped
}

// startReady starts bin and waits for its "ready". On an error the
// process may still run: the returned readyProc (non-nil once started)
// stops it.
func startReady(ctx context.Context, bin string, args []string, logPath string) (*readyProc, error) {
	name := filepath.Base(bin)
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &readyProc{cmd: cmd, done: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && strings.TrimSpace(sc.Text()) == "ready"
		ready <- ok
		for sc.Scan() {
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	select {
	case ok := <-ready:
		if !ok {
			return p, fmt.Errorf("%s failed: %s", name, tailFile(logPath))
		}
		return p, nil
	case <-time.After(5 * time.Minute):
		return p, fmt.Errorf("%s not ready after 5 minutes", name)
	case <-ctx.Done():
		return p, ctx.Err()
	}
}

// stop sends SIGTERM to p's process group, SIGKILL after 15 s; a nil p
// does nothing.
func (p *readyProc) stop() {
	if p == nil {
		return
	}
	stopGroup(p.cmd, p.done)
}

// resetDir lazily unmounts anything left under dir, then empties it.
func resetDir(dir string) error {
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		var mps []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
				mps = append(mps, f[1])
			}
		}
		for i := len(mps) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mps[i], syscall.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("reset %s: %w", dir, err)
	}
	return os.MkdirAll(dir, 0o755)
}

func isMountpoint(dir string) bool {
	b, err := os.ReadFile("/proc/mounts")
	return err == nil && strings.Contains(string(b), " "+dir+" ")
}

func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
