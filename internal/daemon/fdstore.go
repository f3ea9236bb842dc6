package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs"
)

// The FUSE connections of the layers outlive the daemon in a file
// descriptor store: systemd's (FileDescriptorStoreMax= in the unit, which
// systemd 254+ announces to the service as $FDSTORE), or Strata's
// supervisor (see Supervise), which speaks the same protocol. The daemon
// sends each connection's descriptor over $NOTIFY_SOCKET with
// "FDSTORE=1" and a name when a layer is mounted and "FDSTOREREMOVE=1"
// when it is unmounted; the next daemon gets them back as systemd passes
// them ($LISTEN_FDS, $LISTEN_FDNAMES, descriptors from 3 on) and takes the
// connections over (fs.Pool.Inherit).

// fdStore sends descriptors to the store at $NOTIFY_SOCKET.
type fdStore struct {
	addr *net.UnixAddr
}

// openFDStore returns the store the daemon runs under, or nil when there
// is none (run by hand with --supervise=false, or by a systemd unit
// without FileDescriptorStoreMax=).
func openFDStore() *fdStore {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" || os.Getenv("FDSTORE") == "" {
		return nil
	}
	return &fdStore{addr: notifyAddr(path)}
}

// notifyAddr is the address of $NOTIFY_SOCKET: a leading '@' names an
// abstract socket.
func notifyAddr(path string) *net.UnixAddr {
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	return &net.UnixAddr{Name: path, Net: "unixgram"}
}

// send sends one notify message, with f's descriptor when f is not nil.
func (s *fdStore) send(msg string, f *os.File) error {
	return sendNotify(s.addr, msg, f)
}

// sendNotify sends one datagram to addr, with f's descriptor when f is
// not nil.
func sendNotify(addr *net.UnixAddr, msg string, f *os.File) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	return unix.Sendmsg(fd, []byte(msg), oob, &unix.SockaddrUnix{Name: addr.Name}, 0)
}

// add keeps layer d's connection f in the store, and closes f.
func (s *fdStore) add(d digest.Digest, f *os.File) {
	defer f.Close()
	if err := s.send("FDSTORE=1\nFDNAME="+fs.FDName(d), f); err != nil {
		slog.Warn("layer connection not kept in the descriptor store: a daemon restart will unmount it", "layer", d, "error", err)
	}
}

// remove drops layer d's connection from the store.
func (s *fdStore) remove(d digest.Digest) {
	if err := s.send("FDSTOREREMOVE=1\nFDNAME="+fs.FDName(d), nil); err != nil {
		slog.Warn("layer connection not dropped from the descriptor store", "layer", d, "error", err)
	}
}

// inheritedFDs returns the descriptors passed to this process by a
// descriptor store, by name, and clears the variables that passed them so
// that nothing this process starts takes them for its own. $LISTEN_PID,
// when set, must be this process (systemd sets it; the supervisor cannot,
// as Go starts processes, and leaves it unset).
func inheritedFDs() map[string][]*os.File {
	defer func() {
		for _, k := range []string{"LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"} {
			os.Unsetenv(k)
		}
	}()
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	if pid := os.Getenv("LISTEN_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return nil
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	out := map[string][]*os.File{}
	for i := range n {
		fd := 3 + i
		unix.CloseOnExec(fd)
		name := "unknown"
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		out[name] = append(out[name], os.NewFile(uintptr(fd), fmt.Sprintf("listen-fd-%d", fd)))
	}
	return out
}

// inheritLayers hands the pool the layer connections among fds; the
// others, which the daemon does not know, are closed and dropped from the
// store.
func (d *Daemon) inheritLayers(fds map[string][]*os.File) int {
	conns := map[digest.Digest]*os.File{}
	for name, files := range fds {
		ld, ok := fs.ParseFDName(name)
		if !ok || len(files) == 0 {
			for _, f := range files {
				f.Close()
			}
			slog.Warn("unknown descriptor from the descriptor store closed", "name", name, "count", len(files))
			if d.fdStore != nil {
				d.fdStore.send("FDSTOREREMOVE=1\nFDNAME="+name, nil)
			}
			continue
		}
		// One layer, several descriptors (a remount raced an unmount):
		// the last sent is the live one; the others end with their mounts.
		for _, f := range files[:len(files)-1] {
			f.Close()
		}
		conns[ld] = files[len(files)-1]
	}
	d.pool.Inherit(conns)
	return len(conns)
}
