package daemon

import (
	"net"
	"os"
)

// notifyReady tells systemd (Type=notify units) that the daemon serves:
// mounts and containerd snapshots restored, sockets listening. It does
// nothing when not started by systemd. The protocol is one datagram on
// $NOTIFY_SOCKET; a leading '@' names an abstract socket.
func notifyReady() error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("READY=1"))
	return err
}
