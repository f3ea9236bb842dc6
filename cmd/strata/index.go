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
		name:    "index",
		summary: "index an image's plain gzip and tar layers and push the indexes next to it",
		usage:   "[--insecure] [--platform OS/ARCH] [--prioritize FILE] [-q] REF",
		help: `A plain gzip or uncompressed tar layer has no table of contents: the
first mount of it on a machine reads the whole layer once to index it.
'strata index REF' does that once, for every such layer of the image REF,
and pushes the indexes to REF's repository as one OCI artifact whose
subject is the image (the referrers API, or the referrers tag where the
registry lacks it). A later 'strata mount' of the image, on any machine,
finds the artifact, checks that it is bound to exactly the image's layers,
and mounts those layers lazily at once: a read fetches the span of the
layer that holds the file (up to about 1 MiB of uncompressed data before
it) and verifies it. The image itself is not changed.

--prioritize FILE names the files a container reads when it starts, one
path in the image per line, in the order it reads them (as for 'strata
convert --prioritize'). Each gzip layer's index then gets a decompressor
checkpoint just before each listed file it holds, so a read of one
fetches little more than the file, and the list is pushed next to the
image as its prefetch list: a mount fetches those files at once, in that
order, as it does for the prioritized files of an eStargz image. The
layers are read whole again even when this machine has their indexes,
which stay as they are here.

eStargz and zstd:chunked layers carry their own table of contents and need
no index; plain zstd layers cannot be indexed (a mount fetches them
whole). 'strata mount --index-push' pushes the indexes a mount made.
The daemon's layer_indexes setting ("auto", the default, or "off") says
whether mounts look for pushed indexes.

Examples:
  strata index registry.example.com/app:1.0
  strata mount registry.example.com/app:1.0 /mnt/app   # on another machine
  strata index --prioritize start-files.txt registry.example.com/app:1.0`,
		run: runIndex,
	})
}

func runIndex(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["index"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	platform := fs.String("platform", "", "platform to pick from a multi-platform image, os/arch[/variant] (default: this machine's)")
	insecure := fs.Bool("insecure", false, "reach the registry over plain HTTP, or HTTPS without verifying its certificate")
	quiet := fs.BoolP("quiet", "q", false, "no progress on standard error")
	prio := fs.String("prioritize", "", "file listing the paths a start reads, in order: checkpoints before them, pushed as the image's prefetch list")
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	prioritized, err := readPrioritized(*prio)
	if err != nil {
		return err
	}
	cl, err := df.ensure(ctx)
	if err != nil {
		return err
	}
	report, end := reportPrinter(*quiet)
	res, err := cl.Index(ctx, daemon.IndexRequest{Ref: fs.Arg(0), Platform: *platform, Insecure: *insecure, Prioritize: prioritized}, report)
	end()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	for i, l := range res.Layers {
		what := fmt.Sprintf("%s index, %d entries, %d checkpoints", humanBytes(l.IndexBytes), l.Entries, l.Checkpoints)
		if l.IndexBytes == 0 {
			what = l.Note
		}
		fmt.Fprintf(tw, "layer %d\t%s\t%s\t%s\n", i+1, l.Digest, l.Format, what)
	}
	tw.Flush()
	if res.Artifact == "" {
		fmt.Fprintf(stdout, "%s (%s): no layer needs an index; no index pushed\n", res.Ref, res.Digest)
	} else {
		fmt.Fprintf(stdout, "pushed the layer indexes of %s (%s) as %s\n", res.Ref, res.Digest, res.Artifact)
	}
	if res.PrefetchList != "" {
		fmt.Fprintf(stdout, "pushed the prefetch list of %d files as %s", res.Listed, res.PrefetchList)
		if n := len(res.Missing); n > 0 {
			fmt.Fprintf(stdout, " (%d listed paths are no regular file in the image)", n)
		}
		fmt.Fprintln(stdout)
	}
	return nil
}
