// Package run runs one build step's command in a rootfs through an OCI
// runtime (runc by default, crun too): the RUN of a Dockerfile, and what
// `strata run DIR -- CMD` does on a writable mount.
//
// # Model
//
// The caller owns the rootfs (a writable overlay mounted by `strata mount
// --rw`; its upper directory becomes the step's layer). Run writes a bundle
// (config.json generated from runtime-spec types, plus resolv.conf, hosts
// and hostname files) under Options.StateDir, runs `RUNTIME run` in the
// foreground, and returns the command's exit status. The spec is a minimal
// container like runc's example spec: pid, ipc, uts, mount and cgroup
// namespaces (plus a network namespace holding only lo when Network is
// "none"), Docker's default capability set plus CapAdd, Docker's masked and
// read-only /proc and /sys paths, RLIMIT_NOFILE, no user namespace, and the
// rootfs itself as root.path, writable.
//
// # What the rootfs keeps
//
// Only what the command writes. Everything made for the run alone — /proc,
// /dev, /sys, the generated /etc/resolv.conf, /etc/hosts and /etc/hostname,
// the targets of Options.Mounts, a missing working directory — must not
// reach the layer. Runtimes create missing mount destinations inside the
// rootfs (on an overlay: in its upper directory), so Run creates each
// missing destination and missing parent itself first, remembers exactly
// what it created, and afterwards — whatever the outcome, including errors
// and a cancelled ctx — removes those entries deepest first and gives every
// pre-existing parent directory back its atime and mtime, so that a parent
// an overlay copied up looks unchanged to a differ that compares metadata
// (continuity's DiffDirChanges skips such directories). A created directory
// the command wrote into is kept, and so is the mtime of a parent the
// command changed. Files the image already has (its own /etc/hosts, say)
// are bound over, never replaced.
//
// Every path inside the rootfs is resolved as if the rootfs were "/"
// (openat2 with RESOLVE_IN_ROOT): an image whose /etc is a symlink to a host
// path, or whose /etc/passwd is "../../../etc/shadow", is read and written
// inside the rootfs only, never on the host.
//
// # Processes, signals, terminal
//
// Run does not install signal handlers. A caller that wants ^C to reach the
// command passes Options.Signals (see NotifySignals); every signal received
// on it is sent to the command with `RUNTIME kill`. The runtime runs in its
// own process group, so a terminal's ^C is not delivered twice. Cancelling
// ctx kills the command with SIGKILL. In every case the runtime's container
// state is deleted (`RUNTIME delete -f`) and the bundle removed before Run
// returns; the runtime's --root is private to the run, under StateDir. A
// caller killed with SIGKILL cannot do that: with EnableReaper, a reaper
// process (reaper.go) does it as soon as the caller is gone, and Sweep
// does it for runs whose reaper was killed too.
//
// With Options.TTY the command gets a terminal even when the caller's stdio
// are pipes: Run allocates a pseudo-terminal, gives its slave to the
// runtime as stdio, and copies between its master and the caller's
// streams. (runc refuses --console-socket unless it detaches, and a
// detached container's exit status is only available to a subreaper; a
// foreground runtime on a pty keeps the exit status and both runc and crun
// handle it.) When the caller's stdin is itself a terminal it is put in raw
// mode for the run and its window size is forwarded.
//
// # Imports
//
// This package is a leaf: it may import the standard library,
// opencontainers/runtime-spec and image-spec, moby/sys/user,
// golang.org/x/sys and containerd/console, and never another Strata
// package (imports_test.go checks it).
package run
