package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/stratafs/strata/internal/daemon"
)

// daemonFlags are the flags of every command that talks to the daemon.
type daemonFlags struct {
	socket string
	root   string
	config string
	fs     *flag.FlagSet
	// withheld are environment variables a daemon this command starts
	// must not inherit: build secrets given by variable, which would stay
	// in the long-lived daemon (and its supervisor) after the build.
	withheld []string
}

func (d *daemonFlags) add(fs *flag.FlagSet) {
	d.fs = fs
	def := daemon.DefaultConfig()
	fs.StringVar(&d.socket, "socket", "", "daemon control socket (default $STRATA_SOCKET, else the config file's socket, else "+def.Socket+")")
	fs.StringVar(&d.root, "root", "", "state directory (default $STRATA_ROOT, else the config file's root, else "+def.Root+")")
	fs.StringVar(&d.config, "config", daemon.DefaultConfigPath, "daemon config file: its socket and root, and the settings of a daemon this command starts")
}

// resolve fills the socket and root a flag did not give: from the
// environment, else the config file, else the defaults, as the daemon
// itself picks them.
func (d *daemonFlags) resolve() error {
	if d.socket != "" && d.root != "" {
		return nil
	}
	cfg, err := daemon.LoadConfig(d.config, d.fs != nil && d.fs.Changed("config"))
	if err != nil {
		return err
	}
	if d.socket == "" {
		d.socket = envOr("STRATA_SOCKET", cfg.Socket)
	}
	if d.root == "" {
		d.root = envOr("STRATA_ROOT", cfg.Root)
	}
	// Relative, they would name another daemon from another directory.
	if !filepath.IsAbs(d.socket) {
		return fmt.Errorf("the daemon's socket must be an absolute path (--socket, $STRATA_SOCKET or the config file), got %q", d.socket)
	}
	if !filepath.IsAbs(d.root) {
		return fmt.Errorf("the state root must be an absolute path (--root, $STRATA_ROOT or the config file), got %q", d.root)
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// connect returns a client of a running daemon.
func (d *daemonFlags) connect(ctx context.Context) (*daemon.Client, error) {
	if err := d.resolve(); err != nil {
		return nil, err
	}
	c := daemon.NewClient(d.socket)
	if _, err := c.Status(ctx); err != nil {
		if daemon.SupervisorAlive(d.socket) {
			// Its supervisor is starting it again: wait.
			if c, err := d.awaitSupervised(ctx, c); !errors.Is(err, errSupervisorGone) {
				return c, err
			}
		}
		return nil, fmt.Errorf("no strata daemon answers on %s (start one with 'strata daemon')", d.socket)
	}
	return c, nil
}

// connectDir returns the absolute form of the mount directory arg and a
// client of the running daemon: what every command about one mount needs.
func (d *daemonFlags) connectDir(ctx context.Context, arg string) (string, *daemon.Client, error) {
	cl, err := d.connect(ctx)
	if err != nil {
		return "", nil, err
	}
	dir, err := mountDir(ctx, cl, arg)
	return dir, cl, err
}

// ensureDir is connectDir, starting the daemon when none answers: a
// daemon stopped with SIGTERM unmounted everything, and its start mounts
// the writable mounts again with their changes, so a build step goes on.
func (d *daemonFlags) ensureDir(ctx context.Context, arg string) (string, *daemon.Client, error) {
	cl, err := d.ensure(ctx)
	if err != nil {
		return "", nil, err
	}
	dir, err := mountDir(ctx, cl, arg)
	return dir, cl, err
}

// mountDir is the mount directory a command names: its absolute path, as
// mount recorded it, or, when that names no mount and a symlink leads
// from it to one, the mount's own path.
func mountDir(ctx context.Context, cl *daemon.Client, arg string) (string, error) {
	dir, err := absPath("DIR", arg)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil || real == dir {
		return dir, nil
	}
	ms, err := cl.List(ctx)
	if err != nil {
		return dir, nil
	}
	found := ""
	for _, m := range ms {
		switch m.Dir {
		case dir:
			return dir, nil
		case real:
			found = real
		}
	}
	if found != "" {
		return found, nil
	}
	return dir, nil
}

// ensure returns a client of the daemon, starting one in the background
// when none answers. Its log goes to ROOT/daemon.log.
func (d *daemonFlags) ensure(ctx context.Context) (*daemon.Client, error) {
	if err := d.resolve(); err != nil {
		return nil, err
	}
	c := daemon.NewClient(d.socket)
	if _, err := c.Status(ctx); err == nil {
		return c, nil
	}
	// A supervisor starting its daemon again (after a crash, or at an
	// upgrade) is waited for: a daemon started beside it would take the
	// store and unmount the layers whose connections it holds.
	if daemon.SupervisorAlive(d.socket) {
		if c, err := d.awaitSupervised(ctx, c); !errors.Is(err, errSupervisorGone) {
			return c, err
		}
	}
	self, err := selfPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.root, 0o700); err != nil {
		return nil, err
	}
	logPath := filepath.Join(d.root, "daemon.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{"daemon", "--socket", d.socket, "--root", d.root}
	if d.fs.Changed("config") {
		args = append(args, "--config", d.config)
	}
	cmd := exec.Command(self, args...)
	if len(d.withheld) > 0 {
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
			k, _, _ := strings.Cut(kv, "=")
			return slices.Contains(d.withheld, k)
		})
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this command and its terminal
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting strata daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			if daemon.SupervisorAlive(d.socket) {
				// Another command started one first: this one's
				// supervisor stood back.
				if c, err := d.awaitSupervised(ctx, c); !errors.Is(err, errSupervisorGone) {
					return c, err
				}
			}
			return nil, fmt.Errorf("strata daemon exited at start (%v); its log %s ends:\n%s", err, logPath, tail(logPath, 10))
		case <-deadline:
			return nil, fmt.Errorf("strata daemon did not answer on %s within 30s; see %s", d.socket, logPath)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if st, err := c.Status(ctx); err == nil {
			fmt.Fprintf(os.Stderr, "strata: started daemon (pid %d, supervisor %d, log %s)\n", st.PID, cmd.Process.Pid, logPath)
			return c, nil
		}
	}
}

// errSupervisorGone is awaitSupervised's answer when the supervisor ends
// before its daemon answers.
var errSupervisorGone = errors.New("the strata supervisor ended")

// awaitSupervised waits for the daemon a live supervisor is starting to
// answer on c.
func (d *daemonFlags) awaitSupervised(ctx context.Context, c *daemon.Client) (*daemon.Client, error) {
	deadline := time.After(30 * time.Second)
	for {
		select {
		case <-deadline:
			return nil, fmt.Errorf("the strata daemon on %s is being started again by its supervisor but did not answer within 30s; see %s", d.socket, filepath.Join(d.root, "daemon.log"))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := c.Status(ctx); err == nil {
			return c, nil
		}
		if !daemon.SupervisorAlive(d.socket) {
			return nil, errSupervisorGone
		}
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// selfPath is the strata binary to start the daemon from: the program as
// invoked when that resolves (so a strata reached through a symlink or a
// wrapper stays itself), else the running executable.
func selfPath() (string, error) {
	if p, err := exec.LookPath(os.Args[0]); err == nil {
		return filepath.Abs(p)
	}
	return os.Executable()
}

// queryCommand parses the arguments of a read-only command that takes
// --json and no positional arguments, and connects to the daemon.
func queryCommand(ctx context.Context, c *command, args []string, stdout io.Writer) (*daemon.Client, bool, error) {
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := c.parse(fs, args, 0, 0); err != nil {
		return nil, false, err
	}
	cl, err := df.connect(ctx)
	return cl, *asJSON, err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// absPath is the absolute path of a path argument; an empty one is
// refused, where filepath.Abs would take it for the working directory
// (and `strata mount REF ”` would mount over it).
func absPath(what, p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%s is empty: give a path (. for the working directory)", what)
	}
	return filepath.Abs(p)
}

// layoutTag is the grammar of an OCI image layout's
// org.opencontainers.image.ref.name, a tag (no "/" or ":", which the
// PATH:TAG form cannot carry): alphanumerics separated by one of -._@+ or
// by "--" (the image-layout specification's "ref" component).
var layoutTag = regexp.MustCompile(`^[A-Za-z0-9]+(?:(?:[-._@+]|--)[A-Za-z0-9]+)*$`)

// absLayout is --oci-layout PATH[:TAG] with PATH absolute: the daemon
// writes it, from a working directory of its own. given says whether the
// flag was given: an empty one names no layout, and is refused.
func absLayout(s string, given bool) (string, error) {
	if !given {
		return "", nil
	}
	path, tag := s, ""
	if i := strings.LastIndex(s, ":"); i >= 0 && !strings.Contains(s[i:], "/") {
		path, tag = s[:i], s[i+1:]
		if !layoutTag.MatchString(tag) {
			return "", fmt.Errorf("--oci-layout %q: the tag %q is not a valid OCI layout reference name (letters and digits, separated by one of . _ - + @)", s, tag)
		}
		tag = ":" + tag
	}
	abs, err := absPath("--oci-layout's PATH", path)
	if err != nil {
		return "", err
	}
	return abs + tag, nil
}
