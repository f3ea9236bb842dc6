package main

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stratafs/strata/internal/convert"
	"github.com/stratafs/strata/remote"
)

func init() {
	register(&command{
		name:    "convert",
		summary: "rewrite an image as eStargz and push it, so it can be mounted lazily",
		usage:   "[--platform OS/ARCH] [--insecure] [--chunk-size BYTES] SRC DST",
		help: `Reads the image SRC from its registry, rewrites every layer as eStargz
(gzip-compatible: any runtime can still pull it) and pushes the result to
DST. Only one platform is converted: this machine's, or --platform. Layer
data passes through a temporary directory ($TMPDIR) one layer at a time.`,
		run: runConvert,
	})
}

func runConvert(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["convert"]
	fs := c.flags(stdout)
	platform := fs.String("platform", "", "platform to convert, os/arch[/variant] (default: this machine's)")
	insecure := fs.Bool("insecure", false, "reach both registries over plain HTTP")
	chunk := fs.Int("chunk-size", 0, "eStargz chunk size in bytes (default 4 MiB)")
	if err := c.parse(fs, args, 2, 2); err != nil {
		return err
	}
	var ropts []remote.Option
	if *platform != "" {
		p, err := v1.ParsePlatform(*platform)
		if err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
		ropts = append(ropts, remote.WithPlatform(*p))
	}
	if *insecure {
		for _, ref := range fs.Args() {
			r, err := remote.ParseReference(ref)
			if err != nil {
				return err
			}
			ropts = append(ropts, remote.WithInsecureRegistries(r.Context().RegistryStr()))
		}
	}
	opt := convert.Options{ChunkSize: *chunk, Progress: func(done, total int, d v1.Hash, size int64) {
		fmt.Fprintf(stdout, "layer %d/%d converted: %s (%s)\n", done, total, d, humanBytes(size))
	}}
	d, err := convert.Convert(ctx, fs.Arg(0), fs.Arg(1), opt, ropts...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s@%s\n", fs.Arg(1), d)
	return nil
}
