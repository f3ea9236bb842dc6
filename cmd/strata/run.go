package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/stratafs/strata/internal/daemon"
	steprun "github.com/stratafs/strata/internal/run"
)

func init() {
	register(&command{
		name:    "run",
		summary: "run a command in a writable mount, as a container (a build step)",
		usage:   "[flags] DIR [--] [CMD [ARG...]]",
		help: `Runs CMD as a container whose root filesystem is the writable mount DIR
('strata mount --rw REF DIR'), through an OCI runtime (runc, or crun). The
environment, user and working directory come from the image's config, and
its Entrypoint and Cmd when no CMD is given. What the command writes lands
in DIR's writable layer; several runs accumulate there, and each command is
recorded for the history of a later commit.

/proc, /dev, /sys, /dev/shm, /etc/resolv.conf, /etc/hosts and /etc/hostname
exist for the run only: neither they nor any directory or file made only to
mount something on is left in the writable layer. A working directory the
image lacks is made (root's, 0755, as docker and BuildKit make it) and
stays, unless it lies inside a --mount. Standard input, output
and error are connected; SIGINT and SIGTERM are passed to the command, and
a second one kills it (a command that is the container's first process
never sees a signal it has no handler for, as under docker run); the
command's exit status is this command's (127 when the image has no such
command, 126 when it names what cannot be run). Runs of one mount go one
at a time: a second run waits for the first to end.

Examples:
  strata mount --rw localhost:5000/golang:estargz /mnt/build
  strata run /mnt/build -- go version
  strata run --env CGO_ENABLED=0 --workdir /src --mount type=bind,src=$PWD,dst=/src /mnt/build -- go build ./...
  strata run --network none --user nobody /mnt/build -- id
  strata run -t /mnt/build -- /bin/sh`,
		run: runRun,
	})
}

func runRun(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["run"]
	fs := c.flags(stdout)
	fs.SetInterspersed(false) // everything after DIR belongs to CMD
	var df daemonFlags
	df.add(fs)
	var o steprun.Options
	fs.StringArrayVarP(&o.Env, "env", "e", nil, "set an environment variable, K=V (repeatable)")
	fs.StringVarP(&o.WorkDir, "workdir", "w", "", "working directory (default: the image's)")
	fs.StringVarP(&o.User, "user", "u", "", "user, NAME|UID[:GID|:GROUP], names from the image's /etc/passwd and /etc/group (default: the image's)")
	fs.StringVar(&o.Network, "network", "host", "network: host, or none (only a loopback interface)")
	mounts := fs.StringArray("mount", nil, "mount for the run only: type=bind,source=HOST,target=DIR[,readonly] or type=tmpfs,target=DIR[,tmpfs-size=N] (repeatable)")
	fs.StringVar(&o.Hostname, "hostname", "", "host name in the container (default: from the run's ID)")
	fs.BoolVarP(&o.TTY, "tty", "t", false, "give the command a terminal")
	fs.StringArrayVar(&o.CapAdd, "cap-add", nil, "add a capability to the default set, e.g. NET_ADMIN, or ALL (repeatable)")
	fs.StringVar(&o.Runtime, "runtime", "", "OCI runtime: runc, crun or a path (default: runc, else crun)")
	if err := c.parse(fs, args, 1, -1); err != nil {
		return err
	}
	rest := fs.Args()
	o.Args = rest[1:]
	if len(o.Args) > 0 && o.Args[0] == "--" {
		o.Args = o.Args[1:]
	}
	if err := steprun.CheckWorkDir(o.WorkDir); err != nil {
		return fmt.Errorf("--workdir: %w", err)
	}
	for _, m := range *mounts {
		pm, err := steprun.ParseMount(m)
		if err != nil {
			return err
		}
		o.Mounts = append(o.Mounts, pm)
	}
	dir, cl, err := df.ensureDir(ctx, rest[0])
	if err != nil {
		return err
	}
	info, err := cl.StartRun(ctx, daemon.RunRequest{Dir: dir, Args: o.Args})
	if err != nil {
		return fmt.Errorf("%s is not a writable strata mount: %w", dir, err)
	}
	if swept, err := steprun.Sweep(info.StateDir); err != nil {
		fmt.Fprintf(os.Stderr, "strata run: ending runs left behind: %v\n", err)
	} else if len(swept) > 0 {
		fmt.Fprintf(os.Stderr, "strata run: ended %d run(s) whose strata process had died\n", len(swept))
	}
	unlock, err := steprun.HoldLock(ctx, info.LockFile, func() {
		fmt.Fprintf(os.Stderr, "strata run: waiting for the run (or commit) in progress in %s to end\n", dir)
	})
	if err != nil {
		return err
	}
	defer unlock()
	// The mount may have gone while this run waited: an unmount takes
	// the lock only when no run or commit holds it, which it cannot while
	// this run does, so what is mounted now stays until the command ends.
	if err := stillMounted(ctx, cl, dir, info.LockFile); err != nil {
		return err
	}
	o.Rootfs, o.Config, o.StateDir = info.Dir, info.Config, info.StateDir
	o.Stdin, o.Stdout, o.Stderr = os.Stdin, stdout, os.Stderr
	signals, stop := steprun.NotifySignals()
	defer stop()
	o.Signals = signals
	// Signals go to the command, which decides when the run ends: the
	// context is not cancelled by them.
	code, err := steprun.Run(context.WithoutCancel(ctx), o)
	switch {
	case errors.Is(err, steprun.ErrCommandNotFound):
		// A shell's status for a command it cannot find, as docker run's.
		fmt.Fprintf(os.Stderr, "strata run: %v\n", err)
		return exitStatus(127)
	case errors.Is(err, steprun.ErrCommandNotExecutable):
		// And for one it cannot run.
		fmt.Fprintf(os.Stderr, "strata run: %v\n", err)
		return exitStatus(126)
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return exitStatus(code)
	}
	return nil
}

// stillMounted checks that dir is still the writable mount whose run lock
// is lockFile (one per writable layer), once the run holds that lock.
func stillMounted(ctx context.Context, cl *daemon.Client, dir, lockFile string) error {
	ms, err := cl.List(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Dir == dir && m.Writable && m.Snapshot == filepath.Base(lockFile) {
			return nil
		}
	}
	return fmt.Errorf("%s was unmounted while this run waited: nothing was run", dir)
}
