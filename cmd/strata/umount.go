package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
)

func init() {
	register(&command{
		name:    "umount",
		summary: "unmount an image mounted with 'strata mount'",
		usage:   "DIR",
		help: `Unmounts the image at DIR and releases its layers (a layer shared with
another mount stays mounted). The cache keeps what was fetched.`,
		run: runUmount,
	})
}

func runUmount(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["umount"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	dir, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	cl, err := df.connect(ctx)
	if err != nil {
		return err
	}
	if err := cl.Unmount(ctx, dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "unmounted %s\n", dir)
	return nil
}
