package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stratafs/strata/internal/convert"
	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/remote"
)

func init() {
	register(&command{
		name:    "convert",
		summary: "rewrite an image as eStargz and push it, so it can be mounted lazily",
		usage:   "[--platform OS/ARCH] [--insecure] [--chunk-size BYTES] [--prioritize FILE] SRC DST",
		help: `Reads the image SRC from its registry, rewrites every layer as eStargz
(gzip-compatible: any runtime can still pull it) and pushes the result to
DST. Only one platform is converted: this machine's, or --platform. Layer
data passes through a temporary directory ($TMPDIR) one layer at a time.

--prioritize FILE names the files a container reads when it starts, one
path per line in the order they are read (blank lines and lines starting
with # are ignored). They are stored first in their layers, followed by a
prefetch landmark, and a mount fetches them right away, in a few large
requests, instead of one round trip per file when they are opened. Record
the list by tracing a run of the image's usual command, for example
  strace -f -e trace=open,openat,execve -o trace chroot ROOTFS CMD...`,
		run: runConvert,
	})
}

func runConvert(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["convert"]
	fs := c.flags(stdout)
	platform := fs.String("platform", "", "platform to convert, os/arch[/variant] (default: this machine's)")
	insecure := fs.Bool("insecure", false, "reach both registries over plain HTTP, or HTTPS without verifying their certificates")
	chunk := fs.Int("chunk-size", 0, "eStargz chunk size in bytes (default 4 MiB)")
	prio := fs.String("prioritize", "", "file listing the paths a start reads, in order, to store first and prefetch on mount")
	if err := c.parse(fs, args, 2, 2); err != nil {
		return err
	}
	// Small chunks make a table of contents of an entry per few bytes
	// and a read of a request per chunk; huge ones, reads of far more
	// than asked.
	if fs.Changed("chunk-size") && (*chunk < minChunkSize || *chunk > maxChunkSize) {
		return fmt.Errorf("--chunk-size %d: want %d (64 KiB) to %d (256 MiB) bytes", *chunk, minChunkSize, maxChunkSize)
	}
	prioritized, err := readPrioritized(*prio)
	if err != nil {
		return err
	}
	var ropts []remote.Option
	if *platform != "" {
		p, err := daemon.ParsePlatform(*platform)
		if err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
		ropts = append(ropts, remote.WithPlatform(p))
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
	opt := convert.Options{ChunkSize: *chunk, Prioritize: prioritized, Progress: func(done, total int, d v1.Hash, size int64) {
		// Progress on standard error: standard output is the result.
		fmt.Fprintf(os.Stderr, "%d of %d layers converted: %s (%s)\n", done, total, d, humanBytes(size))
	}}
	d, err := convert.Convert(ctx, fs.Arg(0), fs.Arg(1), opt, ropts...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s@%s\n", fs.Arg(1), d)
	return nil
}

// readPrioritized reads the --prioritize file, if one is named.
func readPrioritized(file string) ([]string, error) {
	if file == "" {
		return nil, nil
	}
	paths, err := readPathList(file)
	if err != nil {
		return nil, fmt.Errorf("--prioritize: %w", err)
	}
	return paths, nil
}

// readPathList reads one path per line, skipping blank lines and comments.
func readPathList(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no paths", file)
	}
	return out, nil
}

// The chunk sizes convert takes.
const (
	minChunkSize = 64 << 10
	maxChunkSize = 256 << 20
)
