package run

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// terminal gives the command a terminal whatever the caller's streams are,
// and copies between it and them. Two ways, because the runtimes differ:
//
//   - socket (crun): `crun run --console-socket` in the foreground sends the
//     master of the command's terminal over a unix socket; we copy from it
//     until it reads EIO, which is after the last byte the command wrote.
//   - stdio (runc): runc refuses --console-socket unless it detaches (and a
//     detached container's exit status only reaches a subreaper), but a
//     foreground runc whose stdio is a terminal makes the command's terminal
//     itself and relays, window size included. So we hand runc the slave
//     of a pty of our own and copy from its master.
//
// When the caller's stdin is a terminal it is put in raw mode for the run
// and its window size is forwarded.
type terminal struct {
	opts     *Options
	caller   console.Console // the caller's stdin when it is a terminal
	size     console.WinSize
	listener *net.UnixListener // socket mode
	sockDir  string            // socket mode, when StateDir is too deep for a socket path
	slave    *os.File          // stdio mode, until the runtime has it

	mu      sync.Mutex
	master  console.Console
	output  sync.WaitGroup
	stopWin chan struct{}
}

// maxSocketPath is sun_path's size (108) less a margin.
const maxSocketPath = 100

// defaultSize is the window of a command whose caller has no terminal.
var defaultSize = console.WinSize{Height: 24, Width: 80}

// openTerminal prepares socket mode (a listener in dir) or stdio mode (a
// pty pair).
func openTerminal(o *Options, socket bool, dir string) (*terminal, error) {
	t := &terminal{opts: o, size: defaultSize, stopWin: make(chan struct{})}
	if f, ok := o.Stdin.(*os.File); ok {
		if c, err := console.ConsoleFromFile(f); err == nil {
			t.caller = c
			if s, err := c.Size(); err == nil && s.Height > 0 && s.Width > 0 {
				t.size = s
			}
		}
	}
	if socket {
		sock := filepath.Join(dir, "console.sock")
		if len(sock) >= maxSocketPath {
			d, err := os.MkdirTemp("", "strata-tty-")
			if err != nil {
				return nil, fmt.Errorf("run: tty: %w", err)
			}
			t.sockDir, sock = d, filepath.Join(d, "console.sock")
		}
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.close()
			return nil, fmt.Errorf("run: tty: %w", err)
		}
		t.listener = l
		return t, nil
	}
	master, slavePath, err := console.NewPty()
	if err != nil {
		return nil, fmt.Errorf("run: tty: %w", err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("run: tty: %w", err)
	}
	// Raw, so the relay adds nothing: no echo of input, no \n -> \r\n (the
	// command's own terminal does that).
	if sc, err := console.ConsoleFromFile(slave); err == nil {
		_ = sc.SetRaw()
	}
	_ = master.Resize(t.size)
	t.master, t.slave = master, slave
	return t, nil
}

// runArgs are the runtime's arguments for this mode.
func (t *terminal) runArgs() []string {
	if t.listener != nil {
		return []string{"--console-socket", t.listener.Addr().String()}
	}
	return nil
}

// attach sets the runtime's stdio. In stdio mode the slave becomes the
// runtime's stdio and controlling terminal, in a session of its own, so
// window size changes reach it as SIGWINCH.
func (t *terminal) attach(cmd *exec.Cmd) {
	if t.slave == nil {
		cmd.Stdout, cmd.Stderr = t.opts.Stderr, t.opts.Stderr // the runtime's own messages
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = t.slave, t.slave, t.slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
}

// started begins the copying once the runtime runs.
func (t *terminal) started() {
	if t.caller != nil {
		_ = t.caller.SetRaw()
		go t.forwardWindowSize()
	}
	if t.slave != nil {
		t.slave.Close() // the master reads EIO once the runtime has exited
		t.slave = nil
		t.copy(t.master)
		return
	}
	t.output.Add(1)
	go func() {
		defer t.output.Done()
		master, err := receiveMaster(t.listener)
		if err != nil {
			return // the runtime failed before it made a terminal; it says why
		}
		_ = master.Resize(t.size)
		t.mu.Lock()
		t.master = master
		t.mu.Unlock()
		t.copy(master)
	}()
}

// copy relays stdin to the master (not waited for: a caller's stdin may
// never end; it stops at the first write after the master is closed) and
// the master to stdout until EIO: every slave holder has gone, which is the
// end of the output, not an error.
func (t *terminal) copy(master console.Console) {
	if t.opts.Stdin != nil {
		go func() { _, _ = io.Copy(master, t.opts.Stdin) }()
	}
	out := t.opts.Stdout
	if out == nil {
		out = io.Discard
	}
	t.output.Add(1)
	go func() {
		defer t.output.Done()
		_, _ = io.Copy(out, master)
	}()
}

// receiveMaster accepts the runtime's connection and takes the terminal
// master it passes (SCM_RIGHTS).
func receiveMaster(l *net.UnixListener) (console.Console, error) {
	conn, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return nil, fmt.Errorf("run: tty: no terminal from the runtime (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) == 0 {
		return nil, fmt.Errorf("run: tty: no terminal from the runtime (%v)", err)
	}
	for _, fd := range fds[1:] {
		unix.Close(fd)
	}
	f := os.NewFile(uintptr(fds[0]), "pty-master")
	c, err := console.ConsoleFromFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("run: tty: %w", err)
	}
	return c, nil
}

func (t *terminal) forwardWindowSize() {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	for {
		select {
		case <-t.stopWin:
			return
		case <-winch:
			t.mu.Lock()
			if t.master != nil {
				_ = t.master.ResizeFrom(t.caller)
			}
			t.mu.Unlock()
		}
	}
}

// finish waits for the output to drain once the runtime has exited
// (bounded: a process the command left behind could hold the terminal),
// then closes everything and restores the caller's terminal.
func (t *terminal) finish() {
	if t.listener != nil {
		t.listener.Close() // unblocks an accept the runtime never answered
	}
	drained := make(chan struct{})
	go func() { t.output.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
	}
	t.close()
}

func (t *terminal) close() {
	close(t.stopWin)
	if t.listener != nil {
		t.listener.Close()
	}
	t.mu.Lock()
	if t.master != nil {
		t.master.Close()
	}
	t.mu.Unlock()
	if t.slave != nil {
		t.slave.Close()
	}
	if t.caller != nil {
		_ = t.caller.Reset()
	}
	if t.sockDir != "" {
		os.RemoveAll(t.sockDir)
	}
}
