// Package containerd starts a real containerd for end-to-end tests: Debian's
// containerd and runc (installed with apt when missing), with its own root,
// state, sockets and config under a short directory in /tmp, the CRI plugin
// off, and Strata's snapshots socket loaded as the proxy plugin "strata".
//
// Start ties the process to a test: at the end it kills the containers'
// shims and containerd (by process id, never by name), lazily unmounts
// whatever is left under its directory, and removes it. Ctr runs containerd's
// own CLI against that instance.
//
// The config is containerd's `version = 2` form, which containerd 1.6 and
// 1.7 read (Debian 12 ships 1.6.20); 2.x still accepts it and migrates it
// in memory.
//
// This package is test infrastructure. It must never import Strata's own
// packages (remote, store, fs, snapshotter, internal, cmd): it starts
// containerd the way an operator would, from a config file.
package containerd
