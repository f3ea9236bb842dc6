package main

import (
	"context"
	"fmt"
	"io"
)

func init() {
	register(&command{
		name:    "umount",
		summary: "unmount an image mounted with 'strata mount'",
		usage:   "[--discard] DIR",
		help: `Unmounts the image at DIR and releases its layers (a layer shared with
another mount stays mounted). The cache keeps what was fetched.

A writable mount ('strata mount --rw') whose changes are not committed is
not unmounted: the command says how many changes there are ('strata diff
DIR' lists them). --discard unmounts it anyway and deletes its changes.
Neither unmounts a writable mount while a 'strata run' is running in it.

A process that still has DIR open (a shell in it, a file held open) does
not stop the unmount, as 'umount -l' would not: DIR is detached at once,
and about 2 s later that process's reads of the image's files fail
("transport endpoint is not connected"). Close them first ('fuser -vm DIR'
lists them).

Examples:
  strata umount /mnt/app
  strata umount --discard /mnt/build`,
		run: runUmount,
	})
}

func runUmount(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["umount"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	discard := fs.Bool("discard", false, "unmount a writable mount even with uncommitted changes, and delete them")
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	dir, cl, err := df.connectDir(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	writable := false
	if ms, err := cl.List(ctx); err == nil {
		for _, m := range ms {
			writable = writable || (m.Dir == dir && m.Writable)
		}
	}
	if err := cl.Unmount(ctx, dir, *discard); err != nil {
		return err
	}
	if *discard && writable {
		fmt.Fprintf(stdout, "unmounted %s; its changes are deleted\n", dir)
		return nil
	}
	fmt.Fprintf(stdout, "unmounted %s\n", dir)
	return nil
}
