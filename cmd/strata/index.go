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
		usage:   "[--insecure] [--platform OS/ARCH] [-q] REF",
		help: `A plain gzip or uncompressed tar layer has no table of contents: the
first mount of it on a machine reads the whole layer once to index it.
'strata index REF' does that once, for every such layer of the image REF,
and pushes the indexes to REF's repository as one OCI artifact whose
subject is the image (the referrers API, or the referrers tag where the
registry lacks it). A later 'strata mount' of the image, on any machine,
finds the artifact, checks that it is bound to exactly the image's layers,
and mounts those layers lazily at once: a read fetches the span of the
layer that holds the file (about 4 MiB of uncompressed data) and verifies
it. The image itself is not changed.

eStargz and zstd:chunked layers carry their own table of contents and need
no index; plain zstd layers cannot be indexed (a mount fetches them
whole). 'strata mount --index-push' pushes the indexes a mount made.
The daemon's layer_indexes setting ("auto", the default, or "off") says
whether mounts look for pushed indexes.

Examples:
  strata index registry.example.com/app:1.0
  strata mount registry.example.com/app:1.0 /mnt/app   # on another machine`,
		run: runIndex,
	})
}

func runIndex(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["index"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	platform := fs.String("platform", "", "platform to pick from a multi-platform image, os/arch[/variant] (default: this machine's)")
	insecure := fs.Bool("insecure", false, "reach the registry over plain HTTP")
	quiet := fs.BoolP("quiet", "q", false, "no progress on standard error")
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	cl, err := df.ensure(ctx)
	if err != nil {
		return err
	}
	res, err := cl.Index(ctx, daemon.IndexRequest{Ref: fs.Arg(0), Platform: *platform, Insecure: *insecure}, progressPrinter(*quiet))
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
		fmt.Fprintf(stdout, "%s (%s): no layer needs an index; nothing pushed\n", res.Ref, res.Digest)
		return nil
	}
	fmt.Fprintf(stdout, "pushed the layer indexes of %s (%s) as %s\n", res.Ref, res.Digest, res.Artifact)
	return nil
}
