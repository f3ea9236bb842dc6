package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// A supervisor makes itself known by a name: an abstract unix socket
// named after the control socket it keeps a daemon on, bound for as long
// as it lives (abstract names go with their process, never stale). While
// its daemon restarts the control socket does not answer, and a command
// that started a daemon of its own then would start a second one, whose
// start unmounts the layers whose connections the supervisor holds:
// SupervisorAlive lets the command wait instead, and a second supervisor
// for the same socket refuses to start.

// presenceAddr is the abstract name of the supervisor of control socket
// socket.
func presenceAddr(socket string) string {
	if abs, err := filepath.Abs(socket); err == nil {
		socket = abs
	}
	sum := sha256.Sum256([]byte(filepath.Clean(socket)))
	return "@strata-supervisor-" + hex.EncodeToString(sum[:12])
}

// SupervisorAlive says whether a supervisor keeps a daemon on control
// socket socket: its daemon is running, or starting again.
func SupervisorAlive(socket string) bool {
	c, err := net.Dial("unixgram", presenceAddr(socket))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// presenceEnv passes the bound name from a supervisor to the binary it
// becomes at an upgrade, so that the name is never free meanwhile.
const presenceEnv = "STRATA_SUPERVISOR_PRESENCE"

// errSupervised is claimPresence's refusal: another supervisor keeps a
// daemon on the socket.
var errSupervised = errors.New("a strata supervisor already keeps a daemon on this socket")

// claimPresence binds the supervisor's name for socket, or takes over the
// one an upgraded supervisor passed.
func claimPresence(socket string) (*os.File, error) {
	if v := os.Getenv(presenceEnv); v != "" {
		os.Unsetenv(presenceEnv)
		if fd, err := strconv.Atoi(v); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
			return os.NewFile(uintptr(fd), "presence"), nil
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("supervisor name: %w", err)
	}
	addr := presenceAddr(socket)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("%w (%s)", errSupervised, socket)
		}
		return nil, fmt.Errorf("supervisor name %s: %w", addr, err)
	}
	return os.NewFile(uintptr(fd), "presence"), nil
}

// passPresence makes f survive an exec, named in the environment env.
func passPresence(f *os.File, env []string) []string {
	if f == nil {
		return env
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFD, 0); err != nil {
		slog.Warn("supervisor: its name is not kept across the upgrade", "error", err)
		return env
	}
	return append(env, fmt.Sprintf("%s=%d", presenceEnv, f.Fd()))
}
