package main

import (
	"context"
	"fmt"
	"io"
)

func init() {
	register(&command{
		name:    "diff",
		summary: "list the changes made in a writable mount",
		usage:   "[--json] DIR",
		help: `Lists what changed in the writable mount at DIR since it was mounted, one
line per entry, sorted, as 'docker diff' does: A added, C changed, D
deleted, every directory above a change listed as changed, and a deleted
directory by itself, not its contents. The list comes from the mount's
upper directory; of the image's layers, only the directories a command
deleted and made anew are listed, to tell what they held.

While a 'strata run' is running in DIR, the mount points it made for
itself (/dev, /proc, /sys, /etc/hosts, /etc/hostname, /etc/resolv.conf,
when the image lacks them) are listed too; they are gone when it ends.

Examples:
  strata diff /mnt/build
  strata diff --json /mnt/build`,
		run: runDiff,
	})
}

func runDiff(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["diff"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	dir, cl, err := df.ensureDir(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	changes, err := cl.Changes(ctx, dir)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, changes)
	}
	for _, ch := range changes {
		p := ch.Path
		if ch.PathBytes != nil {
			p = string(ch.PathBytes) // the name as it is, as docker diff prints it
		}
		fmt.Fprintf(stdout, "%s %s\n", ch.Kind, p)
	}
	return nil
}
