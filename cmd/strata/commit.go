package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/term"

	"github.com/stratafs/strata/internal/daemon"
)

func init() {
	register(&command{
		name:    "commit",
		summary: "turn a writable mount's changes into a new image and push it",
		usage:   "[flags] DIR [NEWREF]",
		help: `Turns everything changed in the writable mount DIR since it was mounted
into one new layer on top of its image, with a new config and manifest, and
pushes the result to NEWREF. The base image's layers are never downloaded:
the registry is asked whether it has them, then to mount them from the
base's repository; only a push to another registry streams them through
(and says so). The mount stays as it is: a later commit again holds every
change since the mount. 'strata umount DIR' needs no --discard after a
commit unless something changed since.

The diff comes from the mount's upper directory alone. The new layer is
eStargz by default, so the new image mounts lazily too. The new history
entry records the commands 'strata run' ran in DIR, or --message. With
SOURCE_DATE_EPOCH (or --source-date-epoch) the output is reproducible: the
same changes give the same digests.

With --oci-layout PATH[:TAG] the image is also (or, without NEWREF, only)
written to an OCI image layout, which holds every blob: the base layers are
fetched for it.

It prints NEWREF@sha256:... (the new manifest's digest) on standard output,
progress on standard error.

Examples:
  strata commit /mnt/build localhost:5000/app:v2
  strata commit --change 'CMD ["/app"]' --change 'ENV MODE=prod' -m 'build app' /mnt/build registry.example.com/app:v2
  SOURCE_DATE_EPOCH=0 strata commit --format gzip --digestfile app.digest /mnt/build localhost:5000/app:v2
  strata commit --oci-layout ./app-layout:v2 /mnt/build`,
		run: runCommit,
	})
}

func runCommit(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["commit"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	var req daemon.CommitRequest
	fs.StringVar(&req.Format, "format", "", "layer format: estargz (the default; gzip for a layer whose names a table of contents cannot hold), gzip, zstd, zstd:chunked or uncompressed")
	level := fs.Int("compression-level", 0, "compression level: gzip and estargz -2 to 9 (0 stores the data as it is), zstd and zstd:chunked 1 to 22 (default: the format's own, as -1 for gzip)")
	fs.StringVarP(&req.Message, "message", "m", "", "the new history entry's created_by and comment (default: created_by names the commands run in DIR)")
	fs.StringVar(&req.Author, "author", "", "author of the new image and history entry")
	fs.StringArrayVarP(&req.Changes, "change", "c", nil, "Dockerfile-style config change: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, ONBUILD (repeatable)")
	fs.BoolVar(&req.Docker, "docker", false, "Docker v2 schema 2 manifest and config instead of OCI (with --format gzip or uncompressed: eStargz and zstd layers have no Docker form)")
	sde := fs.String("source-date-epoch", "", "clamp the new layer's times and set the image's creation time to these seconds since 1970 (default $SOURCE_DATE_EPOCH)")
	fs.StringVar(&req.OCILayout, "oci-layout", "", "also write the image to the OCI image layout PATH[:TAG]")
	digestFile := fs.String("digestfile", "", "write the new manifest's digest to this file")
	fs.BoolVar(&req.Insecure, "insecure", false, "reach NEWREF's registry over plain HTTP, or HTTPS without verifying its certificate")
	quiet := fs.BoolP("quiet", "q", false, "print only the result")
	if err := c.parse(fs, args, 1, 2); err != nil {
		return err
	}
	req.Ref = fs.Arg(1)
	if fs.Changed("compression-level") {
		req.CompressionLevel = level
	}
	var err error
	if req.OCILayout, err = absLayout(req.OCILayout, fs.Changed("oci-layout")); err != nil {
		return err
	}
	if req.Ref == "" && req.OCILayout == "" {
		return fmt.Errorf("give NEWREF, --oci-layout PATH[:TAG], or both")
	}
	if req.SourceDateEpoch, err = sourceDateEpoch(*sde); err != nil {
		return err
	}
	dir, cl, err := df.ensureDir(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	req.Dir = dir
	if *digestFile != "" {
		// Made (empty) before the commit: a path that cannot be written
		// fails the command before anything is pushed.
		if err := os.WriteFile(*digestFile, nil, 0o644); err != nil {
			return err
		}
	}
	report, end := reportPrinter(*quiet)
	res, err := cl.Commit(ctx, req, report)
	end()
	if err != nil {
		if *digestFile != "" {
			os.Remove(*digestFile)
		}
		return err
	}
	if res.Warning != "" {
		fmt.Fprintln(os.Stderr, "strata commit: warning: "+res.Warning)
	}
	if *digestFile != "" {
		// The digest alone, no newline, as skopeo and podman write it.
		if err := os.WriteFile(*digestFile, []byte(res.Digest.String()), 0o644); err != nil {
			return err
		}
	}
	switch {
	case req.Ref != "" && res.Ref != "":
		// NEWREF as given, and what it now names.
		fmt.Fprintln(stdout, req.Ref+"@"+res.Digest.String())
	case res.Ref != "":
		fmt.Fprintln(stdout, res.Ref)
	default:
		fmt.Fprintln(stdout, res.Digest)
	}
	return nil
}

// progressLine shows progress on standard error: one line rewritten in
// place on a terminal, plain lines otherwise; done clears the line on a
// terminal once the work is done, so that what follows starts clean.
func progressLine(quiet bool) (progress func(string), done func()) {
	if quiet {
		return nil, func() {}
	}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		shown := false
		return func(line string) {
				shown = true
				fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
			}, func() {
				if shown {
					fmt.Fprint(os.Stderr, "\r\033[K")
				}
			}
	}
	return func(line string) { fmt.Fprintln(os.Stderr, line) }, func() {}
}

// reportPrinter shows the messages of a long command (commit, index) on
// standard error (see reporter).
func reportPrinter(quiet bool) (report func(string), end func()) {
	if quiet {
		return nil, func() {}
	}
	return reporter(os.Stderr, term.IsTerminal(int(os.Stderr.Fd())))
}

// reporter writes a long command's messages to w. On a terminal (tty),
// updates of one operation (messages with the same words before their
// first colon: "pushing to REPO: ...") rewrite its line in place, and any
// other message starts a line of its own and stays (what was pushed,
// streamed or fetched, and every warning, is worth keeping); end ends the
// last line. Plain lines otherwise.
func reporter(w io.Writer, tty bool) (report func(string), end func()) {
	if !tty {
		return func(line string) { fmt.Fprintln(w, line) }, func() {}
	}
	var last string
	shown := false
	return func(line string) {
			key, _, _ := strings.Cut(line, ":")
			switch {
			case !shown:
			case key == last && key != "warning":
				fmt.Fprint(w, "\r\033[K")
			default:
				fmt.Fprintln(w)
			}
			fmt.Fprint(w, line)
			shown, last = true, key
		}, func() {
			if shown {
				fmt.Fprintln(w)
				shown = false
			}
		}
}

// sourceDateEpoch reads --source-date-epoch, or $SOURCE_DATE_EPOCH when
// the flag is not given: nil when neither is.
func sourceDateEpoch(flag string) (*int64, error) {
	if flag == "" {
		flag = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if flag == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(flag, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("source date epoch %q: want whole seconds since 1970", flag)
	}
	if err := daemon.CheckSourceDateEpoch(n); err != nil {
		return nil, err
	}
	return &n, nil
}
