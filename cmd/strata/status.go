package main

import (
	"context"
	"fmt"
	"io"
)

func init() {
	register(&command{
		name:    "status",
		summary: "show whether the daemon runs, its mounts and cache use",
		usage:   "[--json]",
		help:    `Asks the daemon for its process id, how many images and layers it serves, and how full the chunk cache is. Exits 1 when no daemon answers.`,
		run:     runStatus,
	})
}

func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	cl, asJSON, err := queryCommand(ctx, commands["status"], args, stdout)
	if err != nil {
		return err
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "daemon pid %d on %s\n%s mounted, %s served\nchunk cache %s of %s\n",
		st.PID, cl.Socket(), plural(st.Mounts, "image"), plural(st.Layers, "layer"), humanBytes(st.CacheBytes), humanBytes(st.CacheLimit))
	switch {
	case st.Supervisor != 0:
		fmt.Fprintf(stdout, "supervisor pid %d keeps the mounts through a daemon crash or upgrade\n", st.Supervisor)
	case st.Supervised:
		fmt.Fprintln(stdout, "systemd's descriptor store keeps the mounts through a daemon crash or upgrade")
	default:
		fmt.Fprintln(stdout, "no supervisor: a daemon crash leaves the mounts dead until the next start")
	}
	return nil
}
