package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/remote"
)

func init() {
	register(&command{
		name:    "mount",
		summary: "mount an image at a directory, lazily (read-only, or writable with --rw)",
		usage:   "[--rw] [--platform OS/ARCH] [--insecure] [--record[=DURATION] [--record-push]] REF DIR",
		help: `Mounts the image REF (a tag or digest reference) at DIR. The directory
tree appears at once; each file's bytes are fetched from the registry when
first read, verified against the image's digests, and cached.

With --rw the mount is writable: changes land in an upper directory in the
daemon's state root, never in the image's layers, which stay shared with
every other mount of them. It is the root filesystem of a build step:
'strata run DIR -- CMD' runs a command in it, 'strata diff DIR' lists the
changes. It survives daemon restarts. 'strata umount DIR' refuses while
there are uncommitted changes; 'strata umount --discard DIR' drops them.

Layers in eStargz and zstd:chunked form are mounted lazily through their
table of contents. Plain gzip and uncompressed tar layers have none: the
mount looks for their indexes next to the image in its registry (pushed by
'strata index' or --index-push) and, finding them, mounts them lazily at
once; otherwise it reads each such layer whole once (layers in parallel),
indexes it in the same pass, keeps what it read in the cache, and serves
the layer lazily from then on. Plain zstd layers are fetched whole once,
unpacked into the state root and served from there ('strata convert'
makes any image lazily mountable). A daemon is started when none is
running.

With --record the daemon notes which files the workload in the mount opens,
in order, for DURATION (default 60s) or until 'strata umount', and keeps
that list with the image. Every later mount of the same image (by digest)
fetches those files at once, in that order, in a few large requests,
instead of one round trip per file when the workload asks for it.
--record-push also pushes the list to the image's repository as an OCI
referrer of the image, so mounts on other machines use it too (the
daemon's prefetch_lists setting: auto, the default, looks in the store and
then the registry; local, the store only; off). The image is not rebuilt.

Examples:
  strata mount localhost:5000/app:estargz /mnt/app
  strata mount --rw localhost:5000/golang:estargz /mnt/build
  strata run /mnt/build -- go version
  strata mount --rw --record --record-push localhost:5000/golang:estargz /mnt/build
  strata mount --index-push localhost:5000/debian:gzip /mnt/debian`,
		run: runMount,
	})
}

func runMount(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["mount"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	platform := fs.String("platform", "", "platform to pick from a multi-platform image, os/arch[/variant] (default: this machine's)")
	insecure := fs.Bool("insecure", false, "reach the registry over plain HTTP, or HTTPS without verifying its certificate")
	rw := fs.Bool("rw", false, "writable: changes go to an upper directory in the state root")
	record := fs.Duration("record", 0, "note the files the workload opens, for this long or until the unmount, for later mounts to prefetch")
	fs.Lookup("record").NoOptDefVal = daemon.DefaultRecordFor.String()
	recordPush := fs.Bool("record-push", false, "with --record: push the list as a referrer of the image too")
	indexPush := fs.Bool("index-push", false, "push the indexes of the image's gzip and tar layers as a referrer of the image (see 'strata index')")
	if err := c.parse(fs, args, 2, 2); err != nil {
		if fs.Changed("record") && fs.NArg() == 3 {
			if _, derr := time.ParseDuration(fs.Arg(0)); derr == nil {
				fmt.Fprintf(os.Stderr, "strata mount: %q was taken for the image: a duration for --record goes after an equals sign, --record=%s\n", fs.Arg(0), fs.Arg(0))
			}
		}
		return err
	}
	dir, err := absPath("DIR", fs.Arg(1))
	if err != nil {
		return err
	}
	if *recordPush && *record <= 0 {
		return errors.New("--record-push needs --record")
	}
	if *record < 0 {
		return fmt.Errorf("--record: a duration must be positive, got %s", *record)
	}
	cl, err := df.ensure(ctx)
	if err != nil {
		return err
	}
	if *platform != "" {
		// An index picks the platform; an image of one platform must be
		// that one, as docker pull --platform has it.
		want, err := daemon.ParsePlatform(*platform)
		if err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
		r, err := cl.Resolve(ctx, daemon.ResolveRequest{Ref: fs.Arg(0), Platform: *platform, Insecure: *insecure})
		if err != nil {
			return err
		}
		if got, err := v1.ParsePlatform(r.Platform); err == nil && !remote.PlatformMatches(*got, want) {
			return fmt.Errorf("%s is an image for %s only, not %s", fs.Arg(0), r.Platform, *platform)
		}
	}
	start := time.Now()
	progress, progressDone := progressLine(false)
	m, err := cl.MountProgress(ctx, daemon.MountRequest{Ref: fs.Arg(0), Dir: dir, Platform: *platform, Insecure: *insecure, Writable: *rw,
		Record: *record > 0, RecordFor: *record, RecordPush: *recordPush, IndexPush: *indexPush}, progress)
	progressDone()
	if err != nil {
		return err
	}
	var size int64
	for _, l := range m.Layers {
		size += l.Size
	}
	mode := ""
	if m.Writable {
		mode = " writable"
	}
	fmt.Fprintf(stdout, "mounted %s (%s, %s)%s at %s\n", m.Ref, m.Digest, m.Platform, mode, m.Dir)
	fmt.Fprintf(stdout, "%s, %s compressed, in %s; file contents are fetched when read\n",
		plural(len(m.Layers), "layer"), humanBytes(size), time.Since(start).Round(time.Millisecond))
	if m.Recording {
		fmt.Fprintf(stdout, "recording the files opened in it for %s or until 'strata umount'\n", *record)
	}
	switch {
	case m.IndexPushError != "":
		return fmt.Errorf("the image is mounted, but its layer indexes were not pushed: %s", m.IndexPushError)
	case m.IndexArtifact != "":
		fmt.Fprintf(stdout, "pushed its layer indexes as %s\n", m.IndexArtifact)
	case *indexPush:
		fmt.Fprintln(stdout, "no layer needs an index; nothing pushed")
	}
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
