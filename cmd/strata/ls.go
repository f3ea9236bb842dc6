package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
)

func init() {
	register(&command{
		name:    "ls",
		summary: "list mounted images and how much of each layer was fetched",
		usage:   "[--json]",
		help: `Lists the images the daemon has mounted: directory, reference, manifest
digest, and for each layer the bytes fetched from the registry so far
against the layer's compressed size. Writable mounts are marked "rw", with
the disk their changes use.`,
		run: runLs,
	})
}

func runLs(ctx context.Context, args []string, stdout io.Writer) error {
	cl, asJSON, err := queryCommand(ctx, commands["ls"], args, stdout)
	if err != nil {
		return err
	}
	ms, err := cl.List(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, ms)
	}
	if len(ms) == 0 {
		fmt.Fprintln(stdout, "no images mounted")
		return nil
	}
	for _, m := range ms {
		var fetched, size int64
		for _, l := range m.Layers {
			fetched += l.FetchedBytes
			size += l.Size
		}
		mode := "ro"
		if m.Writable {
			mode = "rw, changes " + humanBytes(m.ChangeBytes)
		}
		fmt.Fprintf(stdout, "%s\t%s\t(%s)\n  digest %s  platform %s  fetched %s of %s\n", m.Dir, m.Ref, mode, m.Digest, m.Platform, humanBytes(fetched), humanBytes(size))
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		for i, l := range m.Layers {
			fmt.Fprintf(tw, "  layer %d\t%s\t%s / %s\t%d requests\n", i+1, l.Digest, humanBytes(l.FetchedBytes), humanBytes(l.Size), l.Requests)
		}
		tw.Flush()
	}
	return nil
}
