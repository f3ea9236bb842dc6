package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/stratafs/strata/test/proc"
)

// Binary is where Debian's docker-registry package puts the registry.
const Binary = "/usr/bin/docker-registry"

var installMu sync.Mutex

// EnsureInstalled installs Debian's docker-registry package when Binary is
// absent, and does nothing otherwise (so tests on a prepared machine never
// touch apt). apt's own lock serialises concurrent test processes.
func EnsureInstalled(ctx context.Context) error {
	installMu.Lock()
	defer installMu.Unlock()
	if _, err := os.Stat(Binary); err == nil {
		return nil
	}
	return aptInstall(ctx, "docker-registry")
}

func aptInstall(ctx context.Context, pkg string) error {
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %v: %w\n%s", args, err, tail(out))
		}
		return nil
	}
	install := []string{"-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends", pkg}
	if err := run(install...); err == nil {
		return nil
	}
	// A fresh container often has no package lists yet.
	if err := run("-o", "DPkg::Lock::Timeout=120", "update"); err != nil {
		return err
	}
	return run(install...)
}

func tail(b []byte) []byte {
	if len(b) > 2000 {
		return b[len(b)-2000:]
	}
	return b
}

// config is distribution 2.8's YAML. Upload purging is off because it
// would delete in-progress uploads of a paused test; the HTTP secret is set
// so the registry does not log a warning about generating one.
// config is the registry's configuration. Manifests may name foreign
// (non-distributable) layers served on this machine: without an allow
// list, the registry refuses every manifest that has urls.
const config = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: strata-test-secret
validation:
  manifests:
    urls:
      allow:
        - ^http://127\.0\.0\.1[:/]
`

// process is a docker-registry child in its own process group.
type process struct {
	dir    string
	cfg    string // its config file, removed when it stops
	cmd    *exec.Cmd
	exited <-chan struct{}
	log    *bytes.Buffer // guarded by logMu; stderr+stdout
	logMu  *sync.Mutex
	once   sync.Once
	err    error
}

// New starts docker-registry on a free 127.0.0.1 port with storage under
// dir, and returns once /v2/ answers. The port is picked by binding :0 and
// releasing it, so another process may steal it in between; New then
// retries with a fresh port, up to 3 times.
func New(ctx context.Context, dir string) (*Registry, error) {
	return newRegistry(ctx, dir, nil)
}

// Auth is a user the registry requires (HTTP basic auth, htpasswd).
type Auth struct{ User, Password string }

// NewWithAuth is New for a registry that answers only requests with
// auth's credentials, as a private registry does: anything else gets 401
// and a basic-auth challenge.
func NewWithAuth(ctx context.Context, dir string, auth Auth) (*Registry, error) {
	return newRegistry(ctx, dir, &auth)
}

func newRegistry(ctx context.Context, dir string, auth *Auth) (*Registry, error) {
	var extra string
	if auth != nil {
		hash, err := bcrypt.GenerateFromPassword([]byte(auth.Password), bcrypt.MinCost)
		if err != nil {
			return nil, err
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(htpasswd, fmt.Appendf(nil, "%s:%s\n", auth.User, hash), 0o600); err != nil {
			return nil, err
		}
		extra = fmt.Sprintf("auth:\n  htpasswd:\n    realm: strata-test\n    path: %s\n", htpasswd)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		host, err := freeHost()
		if err != nil {
			return nil, err
		}
		p, err := startProcess(dir, host, extra)
		if err != nil {
			return nil, err
		}
		if err = waitReady(ctx, "http://"+host, p.exited, auth); err == nil {
			return &Registry{kind: KindDistribution, host: host, proc: p}, nil
		}
		lastErr = fmt.Errorf("%w\nregistry log:\n%s", err, p.output())
		_ = p.stop()
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func freeHost() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("registry: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startProcess(dir, host, extraConfig string) (*process, error) {
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	cfg := filepath.Join(dir, "config-"+portOf(host)+".yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config+extraConfig, storage, host), 0o644); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	p := &process{dir: storage, cfg: cfg, log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	p.cmd = exec.Command(Binary, "serve", cfg)
	p.cmd.Stdout = lockedWriter{p}
	p.cmd.Stderr = lockedWriter{p}
	// Own process group so cleanup kills any children too, and killed
	// with the test binary, never before (see package proc).
	exited, err := proc.Start(p.cmd)
	if err != nil {
		_ = os.Remove(cfg)
		return nil, fmt.Errorf("registry: start %s: %w", Binary, err)
	}
	p.exited = exited
	return p, nil
}

func portOf(host string) string {
	_, port, _ := net.SplitHostPort(host)
	if _, err := strconv.Atoi(port); err != nil {
		return "unknown"
	}
	return port
}

type lockedWriter struct{ p *process }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.logMu.Lock()
	defer w.p.logMu.Unlock()
	if w.p.log.Len() < 1<<20 { // bounded: a chatty registry must not eat memory
		w.p.log.Write(b)
	}
	return len(b), nil
}

func (p *process) output() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// stop sends SIGTERM to the process group, and SIGKILL after 5 s.
func (p *process) stop() error {
	p.once.Do(func() {
		pgid := -p.cmd.Process.Pid
		if err := syscall.Kill(pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			p.err = fmt.Errorf("registry: stop: %w", err)
		}
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(pgid, syscall.SIGKILL)
			<-p.exited
		}
		// A kept storage directory (the bench's) must not collect one
		// config a run.
		_ = os.Remove(p.cfg)
	})
	return p.err
}
