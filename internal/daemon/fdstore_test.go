package daemon

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// notifyListener is a stand-in for systemd's $NOTIFY_SOCKET: it returns
// every datagram with the descriptors it carried.
type notifyListener struct {
	c *net.UnixConn
}

type notifyMsg struct {
	text  string
	files []*os.File
}

func listenNotify(t *testing.T) (*notifyListener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &notifyListener{c: c}, path
}

func (l *notifyListener) next(t *testing.T) notifyMsg {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	l.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := l.c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	files := receivedFiles(oob[:oobn])
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
	})
	return notifyMsg{text: string(buf[:n]), files: files}
}

// TestFDStoreSpeaksSystemdNotify: the daemon keeps a layer connection's
// descriptor with FDSTORE=1 and its name, drops it with FDSTOREREMOVE=1,
// as systemd's file descriptor store expects; and only when $FDSTORE says
// the store is there.
func TestFDStoreSpeaksSystemdNotify(t *testing.T) {
	l, path := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("FDSTORE", "")
	if openFDStore() != nil {
		t.Fatal("a store without $FDSTORE")
	}
	t.Setenv("FDSTORE", "16")
	s := openFDStore()
	if s == nil {
		t.Fatal("no store with $NOTIFY_SOCKET and $FDSTORE")
	}
	d := digest.FromString("layer")
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	var want unix.Stat_t
	unix.Fstat(int(f.Fd()), &want)
	s.add(d, f)
	m := l.next(t)
	if m.text != "FDSTORE=1\nFDNAME=layer-"+d.Encoded() || len(m.files) != 1 {
		t.Fatalf("add sent %q with %d descriptors", m.text, len(m.files))
	}
	var got unix.Stat_t
	unix.Fstat(int(m.files[0].Fd()), &got)
	if got.Ino != want.Ino || got.Rdev != want.Rdev {
		t.Fatal("the descriptor sent is not the one added")
	}
	if _, err := f.Stat(); err == nil {
		t.Error("add left its copy of the descriptor open")
	}
	s.remove(d)
	if m := l.next(t); m.text != "FDSTOREREMOVE=1\nFDNAME=layer-"+d.Encoded() || len(m.files) != 0 {
		t.Fatalf("remove sent %q with %d descriptors", m.text, len(m.files))
	}
}

// TestSupervisorKeepsWhatIsStored: the supervisor's store keeps
// descriptors by name, several under one name, drops them all on
// FDSTOREREMOVE, ignores descriptors sent without FDSTORE=1, and notes
// READY=1.
func TestSupervisorKeepsWhatIsStored(t *testing.T) {
	s, err := newSupervisor()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	go s.receive()
	open := func() *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	send := func(msg string, f *os.File) {
		t.Helper()
		if err := sendNotify(notifyAddr(s.name), msg, f); err != nil {
			t.Fatal(err)
		}
	}
	send("FDSTORE=1\nFDNAME=layer-a", open())
	send("FDSTORE=1\nFDNAME=layer-a", open())
	send("FDSTORE=1\nFDNAME=layer-b", open())
	send("FDNAME=layer-c", open()) // no FDSTORE=1: not kept
	s.sync()
	if n := s.count(); n != 3 {
		t.Fatalf("%d descriptors stored, want 3", n)
	}
	send("FDSTOREREMOVE=1\nFDNAME=layer-a", nil)
	send("READY=1", nil)
	s.sync()
	if n := s.count(); n != 1 || !s.ready() {
		t.Fatalf("after removing layer-a: %d stored (want 1), ready %v", n, s.ready())
	}
	s.mu.Lock()
	name := s.fds[0].name
	s.mu.Unlock()
	if name != "layer-b" {
		t.Fatalf("kept %q", name)
	}
	if !strings.HasPrefix(s.name, "@strata-supervisor-") {
		t.Fatalf("socket %q is not abstract", s.name)
	}
}
