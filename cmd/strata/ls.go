package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/stratafs/strata/internal/daemon"
)

func init() {
	register(&command{
		name:    "ls",
		summary: "list mounted images and how much of each layer was fetched",
		usage:   "[--json]",
		help: `Lists the images the daemon has mounted: directory, reference, manifest
digest, and for each layer the bytes fetched from the registry since the
daemon started (a daemon that took the mounts over after a crash or an
upgrade counts from 0; the chunk cache keeps what was fetched before)
against the layer's compressed size, and how it is read: its format
(estargz, zstd:chunked, tar), lazily from the registry or from the local
store (a layer committed or built here). Writable mounts are marked "rw",
with the disk their changes use. Then the layers the containerd
snapshotter serves lazily, with the image and the client's label set (cri:
containerd's CRI and strata pull; stargz: BuildKit, nerdctl, ctr-remote).
--json prints the mounts only.

Examples:
  strata ls
  strata ls --json`,
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
	ss, err := cl.Snapshots(ctx)
	if err != nil {
		return err
	}
	if len(ms) == 0 && len(ss) == 0 {
		fmt.Fprintln(stdout, "no images mounted")
		return nil
	}
	defer printSnapshots(stdout, ss)
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
			fmt.Fprintf(tw, "  layer %d\t%s\t%s / %s\t%s\t%s\n", i+1, l.Digest, humanBytes(l.FetchedBytes), humanBytes(l.Size), plural(int(l.Requests), "request"), servedAs(l))
		}
		tw.Flush()
	}
	return nil
}

// servedAs says how a layer is read: its format, lazily from the registry
// through its index, or from the store for a layer made here.
func servedAs(l daemon.Layer) string {
	if l.Format == "" {
		return ""
	}
	if l.Packed != "" {
		return l.Packed + ", fetched whole once, read from the local store"
	}
	if l.Local {
		return l.Format + ", from the local store"
	}
	if l.Format == "gzip" {
		return "gzip, lazily through its seekable index"
	}
	return l.Format + ", lazily"
}

// printSnapshots lists the layers served lazily to containerd clients.
func printSnapshots(w io.Writer, ss []daemon.ContainerdSnapshot) {
	if len(ss) == 0 {
		return
	}
	fmt.Fprintf(w, "containerd snapshots served lazily: %d\n", len(ss))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, s := range ss {
		fmt.Fprintf(tw, "  %s\t%s (%s)\t%s / %s\t%s\t%s\n", s.Layer.Digest, s.Ref, s.Client,
			humanBytes(s.Layer.FetchedBytes), humanBytes(s.Layer.Size), plural(int(s.Layer.Requests), "request"), servedAs(s.Layer))
	}
	tw.Flush()
}
