package daemon

import "os"

// notifyReady tells systemd (Type=notify units) that the daemon serves:
// mounts and containerd snapshots restored, sockets listening. It does
// nothing when not started by systemd. The protocol is one datagram on
// $NOTIFY_SOCKET; a leading '@' names an abstract socket.
func notifyReady() error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	return sendNotify(notifyAddr(path), "READY=1", nil)
}
