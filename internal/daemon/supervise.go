package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ExitHandover is the exit status of a daemon that stopped to hand its
// connections over (strata daemon --upgrade): whoever runs it starts the
// binary again at once, and the new process takes the connections over.
const ExitHandover = 75

// ErrHandover is what Run returns after a handover stop.
var ErrHandover = errors.New("daemon stopped to hand its mounts over")

// Supervise runs the daemon as a child process (self with args, the
// same command line) and keeps it running: it is the daemon's descriptor
// store (the systemd notify protocol, see fdstore.go) and restarts it,
// with the stored descriptors, when it dies or hands over, so that its
// FUSE connections — and every mount and container on them — live on.
// It does nothing else, so that it has no reason to fail; at an upgrade
// it becomes the new binary too (exec, same PID, store kept). A SIGTERM or
// SIGINT (ctx done) is passed on to the daemon, which unmounts everything
// and exits; then Supervise returns. It also returns when the daemon
// exits cleanly by itself, or fails before it ever served. socket is the
// daemon's control socket, by which the supervisor is known (see
// SupervisorAlive): a second supervisor of one socket refuses to start.
func Supervise(ctx context.Context, self string, args []string, socket string) error {
	s, err := newSupervisor()
	if err != nil {
		return err
	}
	defer s.close()
	if s.presence, err = claimPresence(socket); err != nil {
		if len(s.fds) == 0 {
			return err
		}
		// An upgraded supervisor that lost its name holds connections
		// still: it goes on, unnamed.
		slog.Error("supervisor: going on without its name", "error", err)
	}
	go s.receive()
	// A supervisor that inherited a store (an upgrade) continues one
	// whose daemon served: a failing start is retried, not the end.
	served := len(s.fds) > 0
	backoff := time.Duration(0)
	for {
		start := time.Now()
		cmd, err := s.start(self, args)
		if err != nil && served {
			// The binary at self is gone or broken (moved away while
			// the daemon ran, or an upgrade to a path that holds none):
			// this process's own binary, which stays runnable, keeps the
			// connections alive.
			slog.Error("supervisor: starting the daemon failed; starting it from the supervisor's own binary", "binary", self, "error", err)
			cmd, err = s.start("/proc/self/exe", args)
		}
		if err != nil {
			if !served {
				return err
			}
			// Returning would drop every stored connection: try again.
			slog.Error("supervisor: starting the daemon failed; trying again", "error", err)
			select {
			case <-time.After(time.Second):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var werr error
		select {
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			werr = <-exited
			if werr != nil {
				return fmt.Errorf("strata daemon: %w", werr)
			}
			return nil
		case werr = <-exited:
		}
		s.sync()
		if s.ready() {
			served = true
		}
		code := cmd.ProcessState.ExitCode()
		switch {
		case code == 0:
			return nil // stopped cleanly: everything is unmounted
		case code == ExitHandover:
			// An upgrade: the supervisor becomes the binary now at self
			// too, keeping its store, and starts the daemon from there.
			slog.Info("strata daemon handed over; the supervisor runs the binary now installed", "binary", self)
			err := s.reexec(self, append([]string{self}, args...))
			slog.Error("supervisor: running the new binary failed; starting the daemon from this one", "error", err)
			backoff = 0
			continue
		case !served:
			return fmt.Errorf("strata daemon failed before serving: %v", werr)
		}
		// A crash: back at once the first time, then slower if it keeps
		// crashing soon after starting.
		if time.Since(start) > 30*time.Second {
			backoff = 0
		}
		slog.Error("strata daemon died; starting it again", "error", werr, "after", backoff, "connections", s.count())
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		// At most 1.5 s: with the start, a daemon that keeps crashing
		// is still back within 2 s each time.
		backoff = min(max(2*backoff, 250*time.Millisecond), 1500*time.Millisecond)
	}
}

// supervisor is the descriptor store of Supervise.
type supervisor struct {
	conn     *net.UnixConn
	presence *os.File // the bound name of presenceAddr, nil for none
	name     string   // its $NOTIFY_SOCKET, abstract
	outer    string   // the supervisor's own $NOTIFY_SOCKET (systemd), if any
	mu       sync.Mutex
	fds      []storedFD
	isUp     bool          // READY=1 since the last start
	synced   chan struct{} // closed when the receive loop sees a SYNC
}

type storedFD struct {
	name string
	f    *os.File
}

func newSupervisor() (*supervisor, error) {
	b := make([]byte, 8)
	rand.Read(b)
	name := fmt.Sprintf("@strata-supervisor-%d-%s", os.Getpid(), hex.EncodeToString(b))
	c, err := net.ListenUnixgram("unixgram", notifyAddr(name))
	if err != nil {
		return nil, fmt.Errorf("supervisor socket: %w", err)
	}
	outer := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	return &supervisor{conn: c, name: name, outer: outer, fds: inheritedStore()}, nil
}

// storeEnv passes the store from a supervisor to the binary it becomes
// at an upgrade: "FD:NAME" pairs, comma-separated.
const storeEnv = "STRATA_SUPERVISOR_STORE"

// inheritedStore is the store a previous supervisor binary passed.
func inheritedStore() []storedFD {
	v := os.Getenv(storeEnv)
	os.Unsetenv(storeEnv)
	var out []storedFD
	for _, pair := range strings.Split(v, ",") {
		fdStr, name, ok := strings.Cut(pair, ":")
		fd, err := strconv.Atoi(fdStr)
		if !ok || err != nil || fd < 3 {
			continue
		}
		unix.CloseOnExec(fd)
		out = append(out, storedFD{name: name, f: os.NewFile(uintptr(fd), "stored")})
	}
	if len(out) > 0 {
		slog.Info("supervisor: descriptors kept across the upgrade", "count", len(out))
	}
	return out
}

// reexec replaces this process with the binary at argv[0]'s path self,
// passing it the store; it returns only when that fails, with the store
// as it was.
func (s *supervisor) reexec(self string, argv []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pairs []string
	for _, sf := range s.fds {
		fd := sf.f.Fd()
		if _, err := unix.FcntlInt(fd, unix.F_SETFD, 0); err != nil {
			return err
		}
		pairs = append(pairs, fmt.Sprintf("%d:%s", fd, sf.name))
	}
	env := slicesDeleteEnv(os.Environ(), storeEnv, "NOTIFY_SOCKET", presenceEnv)
	env = append(env, storeEnv+"="+strings.Join(pairs, ","))
	env = passPresence(s.presence, env)
	if s.outer != "" {
		env = append(env, "NOTIFY_SOCKET="+s.outer)
	}
	err := unix.Exec(self, argv, env)
	for _, sf := range s.fds {
		unix.CloseOnExec(int(sf.f.Fd()))
	}
	if s.presence != nil {
		unix.CloseOnExec(int(s.presence.Fd()))
	}
	return err
}

// start starts the daemon with every stored descriptor.
func (s *supervisor) start(self string, args []string) (*exec.Cmd, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.isUp = false
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	var names []string
	for _, sf := range s.fds {
		cmd.ExtraFiles = append(cmd.ExtraFiles, sf.f)
		names = append(names, sf.name)
	}
	env := slicesDeleteEnv(os.Environ(), "NOTIFY_SOCKET", "FDSTORE", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", supervisorEnv, presenceEnv)
	env = append(env, "NOTIFY_SOCKET="+s.name, "FDSTORE=65536", fmt.Sprintf("%s=%d", supervisorEnv, os.Getpid()))
	if len(names) > 0 {
		env = append(env, fmt.Sprintf("LISTEN_FDS=%d", len(names)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting strata daemon: %w", err)
	}
	return cmd, nil
}

// supervisorEnv tells the daemon its supervisor's PID.
const supervisorEnv = "STRATA_SUPERVISOR_PID"

// supervisorPID is the PID of the supervisor this daemon runs under, 0
// for none.
func supervisorPID() int {
	pid, err := strconv.Atoi(os.Getenv(supervisorEnv))
	if err != nil || pid != os.Getppid() {
		return 0
	}
	return pid
}

func slicesDeleteEnv(env []string, keys ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, key := range keys {
			drop = drop || k == key
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// receive handles notify messages until the socket is closed.
func (s *supervisor) receive() {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*253))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Error("supervisor: reading notify messages", "error", err)
			}
			return
		}
		s.handle(string(buf[:n]), receivedFiles(oob[:oobn]))
	}
}

// receivedFiles returns the descriptors a message carried.
func receivedFiles(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var out []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			out = append(out, os.NewFile(uintptr(fd), "stored"))
		}
	}
	return out
}

// handle applies one message: FDSTORE=1 keeps its descriptors under
// FDNAME, FDSTOREREMOVE=1 closes those of FDNAME, READY=1 notes (and
// passes on to systemd) that the daemon serves; SYNC is the supervisor's
// own marker (see sync).
func (s *supervisor) handle(msg string, files []*os.File) {
	kv := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			kv[k] = v
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if kv["FDSTORE"] == "1" {
		for _, f := range files {
			s.fds = append(s.fds, storedFD{name: kv["FDNAME"], f: f})
		}
		files = nil
	}
	if kv["FDSTOREREMOVE"] == "1" {
		keep := s.fds[:0]
		for _, sf := range s.fds {
			if sf.name == kv["FDNAME"] {
				sf.f.Close()
				continue
			}
			keep = append(keep, sf)
		}
		s.fds = keep
	}
	if kv["READY"] == "1" {
		s.isUp = true
		if s.outer != "" {
			sendNotify(notifyAddr(s.outer), "READY=1", nil)
		}
	}
	if _, ok := kv["SYNC"]; ok && s.synced != nil {
		close(s.synced)
		s.synced = nil
	}
	for _, f := range files { // descriptors sent without FDSTORE=1
		f.Close()
	}
}

// sync waits until every message sent before it has been handled: a
// daemon that stored a descriptor and died must have it passed on.
// Datagrams on one socket are received in order, so a marker sent now is
// handled after them.
func (s *supervisor) sync() {
	done := make(chan struct{})
	s.mu.Lock()
	s.synced = done
	s.mu.Unlock()
	if err := sendNotify(notifyAddr(s.name), "SYNC=1", nil); err != nil {
		return
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		slog.Warn("supervisor: notify messages not all handled before restart")
	}
}

func (s *supervisor) ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isUp
}

func (s *supervisor) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fds)
}

// close closes the socket and every stored descriptor: connections no
// daemon serves then end (the kernel aborts them) rather than hang.
func (s *supervisor) close() {
	s.conn.Close()
	if s.presence != nil {
		s.presence.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sf := range s.fds {
		sf.f.Close()
	}
	s.fds = nil
}
