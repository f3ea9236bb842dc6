package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"syscall"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors callers test with errors.Is. Each is wrapped with the detail: the
// command and PATH searched, the user and file, the runtime looked for.
var (
	// ErrNoRuntime: neither the runtime asked for nor (by default) runc or
	// crun is installed.
	ErrNoRuntime = errors.New("no OCI runtime found: install runc (apt-get install runc) or crun")
	// ErrCommandNotFound: the command is not an executable file in the
	// rootfs (searched along the container's PATH when it has no slash).
	ErrCommandNotFound = errors.New("command not found in the image")
	// ErrCommandNotExecutable: the command's path names what cannot be
	// run (a directory, a file without an execute bit, a device).
	ErrCommandNotExecutable = errors.New("command cannot be run")
	// ErrNoCommand: no Args, and the image has neither Entrypoint nor Cmd.
	ErrNoCommand = errors.New("no command: give one, or use an image with an Entrypoint or Cmd")
	// ErrUserNotFound: a user name is not in the image's /etc/passwd.
	ErrUserNotFound = errors.New("user not found in the image")
	// ErrGroupNotFound: a group name is not in the image's /etc/group.
	ErrGroupNotFound = errors.New("group not found in the image")
	// ErrInvalidOptions: Options or a --mount value that cannot work.
	ErrInvalidOptions = errors.New("invalid run options")
	// ErrUnsafeRootfs: the rootfs has /dev, /proc or /sys as a symlink or
	// as something else than a directory, where a runtime would make
	// device nodes and links through it on the host.
	ErrUnsafeRootfs = errors.New("the image cannot be run safely")
)

// Options says what to run and how. Only Rootfs is required.
type Options struct {
	Rootfs   string              // the writable mount (an overlayfs mountpoint); must exist
	Args     []string            // the command; empty: the image's Entrypoint+Cmd
	Config   ocispec.ImageConfig // from the image config: Env, User, WorkingDir, Entrypoint, Cmd
	Env      []string            // K=V, added to the image's Env or overriding it
	WorkDir  string              // overrides Config.WorkingDir; default "/"; created for the run if missing
	User     string              // NAME|UID[:GID|:GROUP]; overrides Config.User; default root
	Network  string              // "host" (default) or "none" (own network namespace, only lo)
	Mounts   []Mount             // extra mounts, from ParseMount
	Hostname string              // default: the first 12 hex digits of the run ID
	TTY      bool                // give the command a terminal (stdout and stderr merged, as on any tty)
	CapAdd   []string            // added to Docker's default set: "CAP_NET_ADMIN", "NET_ADMIN" or "ALL"
	Runtime  string              // "runc" (default; crun if runc is missing), "crun", or a path
	StateDir string              // where the bundle and runtime state go (removed afterwards); default a temp dir
	Signals  <-chan os.Signal    // each signal received is sent to the command (see NotifySignals)
	Stdin    io.Reader           // nil: /dev/null
	Stdout   io.Writer           // nil: discarded
	Stderr   io.Writer           // nil: discarded
}

// NotifySignals relays SIGINT, SIGTERM, SIGHUP and SIGQUIT of this process
// to the returned channel, for Options.Signals: while a command runs, ^C
// reaches the command instead of killing the caller. Call stop when Run has
// returned.
func NotifySignals() (signals <-chan os.Signal, stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	return ch, func() { signal.Stop(ch) }
}

// Run runs the command in o.Rootfs and waits for it. exitCode is the
// command's exit status, 128+N when signal N killed it. err is non-nil only
// when the command could not be run (then exitCode is -1), or when ctx was
// cancelled (the command was killed; exitCode says how it ended), or when
// cleaning up failed. Nothing made only for the run is left in the rootfs,
// nothing is left running or mounted, and the bundle is removed, whatever
// the outcome.
func Run(ctx context.Context, o Options) (exitCode int, err error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	if err := CheckWorkDir(o.WorkDir); err != nil {
		return -1, err
	}
	rt, err := findRuntime(o.Runtime)
	if err != nil {
		return -1, err
	}
	id, err := newID()
	if err != nil {
		return -1, err
	}
	stateDir, removeStateDir, err := makeStateDir(o.StateDir, id)
	if err != nil {
		return -1, err
	}
	releaseReaper := func() {}
	defer func() { releaseReaper() }() // after the state dir is gone: nothing left to reap
	defer func() {
		if rerr := removeStateDir(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if err := writeOwner(stateDir, rt); err != nil {
		return -1, fmt.Errorf("run: state dir: %w", err)
	}
	if releaseReaper, err = startReaper(stateDir); err != nil {
		releaseReaper = func() {}
		return -1, err
	}
	root, err := openRoot(o.Rootfs)
	if err != nil {
		return -1, err
	}
	defer root.close()

	targets := newTargets(root)
	defer func() {
		if cerr := targets.cleanup(); cerr != nil && err == nil {
			err = fmt.Errorf("run: cleaning up the rootfs: %w", cerr)
		}
	}()
	bundle := filepath.Join(stateDir, "bundle")
	spec, err := prepare(o, id, root, targets, bundle)
	if err != nil {
		return -1, err
	}
	if err := writeSpec(bundle, spec); err != nil {
		return -1, err
	}
	targets.seal()
	if err := targets.save(o.Rootfs, filepath.Join(stateDir, targetsFile)); err != nil {
		return -1, fmt.Errorf("run: state dir: %w", err)
	}
	c := &container{rt: rt, id: id, stateDir: stateDir, bundle: bundle, opts: &o}
	return c.run(ctx)
}

// CheckWorkDir refuses an Options.WorkDir that is not absolute, as docker
// run refuses one ("" is the image's).
func CheckWorkDir(wd string) error {
	if wd != "" && !path.IsAbs(wd) {
		return fmt.Errorf("%w: the working directory %q is not an absolute path", ErrInvalidOptions, wd)
	}
	return nil
}

// newID is "strata-run-" and 16 random hex digits: unique per run, so runs
// never see each other's state even under one runtime root.
func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("run: random id: %w", err)
	}
	return "strata-run-" + hex.EncodeToString(b[:]), nil
}

// makeStateDir makes StateDir/<id> (or a temp dir when StateDir is empty)
// and returns the function that removes it.
func makeStateDir(parent, id string) (string, func() error, error) {
	if parent == "" {
		dir, err := os.MkdirTemp("", id+"-")
		if err != nil {
			return "", nil, fmt.Errorf("run: state dir: %w", err)
		}
		return dir, func() error { return os.RemoveAll(dir) }, nil
	}
	dir := filepath.Join(parent, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("run: state dir: %w", err)
	}
	return dir, func() error { return os.RemoveAll(dir) }, nil
}
