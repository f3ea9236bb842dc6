package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/stratafs/strata/internal/build"
	steprun "github.com/stratafs/strata/internal/run"
	"github.com/stratafs/strata/remote"
	"golang.org/x/term"
)

func init() {
	register(&command{
		name:    "build",
		summary: "build an image from a Dockerfile on lazy bases",
		usage:   "[flags] CONTEXT",
		help: `Builds the Dockerfile of CONTEXT (CONTEXT/Dockerfile, or its Containerfile,
unless -f says otherwise) the way 'docker build' and 'buildah bud' do, read
by BuildKit's own Dockerfile parser. COPY and ADD leave out what the ignore
file excludes: the Dockerfile's own (-f FILE: FILE.dockerignore next to
it), else CONTEXT/.containerignore, else CONTEXT/.dockerignore, or
--ignorefile. CONTEXT - reads standard input as 'docker build -' does: a
tar archive of the context (plain, gzip, bzip2, xz or zstd), whose -f
names a file in it, or else a Dockerfile and no context. Every FROM is
mounted lazily: the base is never downloaded, each step fetches only the
files it reads, and --push sends only the new layers (base layers are
mounted from the base's repository).
Bases in eStargz, zstd:chunked, gzip (with indexes pushed by 'strata
index') or tar form are read lazily; gzip layers without an index are read
once to index them, and zstd layers are fetched whole once and kept (see
'strata mount --help'). With --record, the first RUN on each FROM image
notes the files it opens and keeps the list with that image (--record-push
pushes it as a referrer of the image): later builds FROM it, here or on any
machine, fetch those files at the mount in a few large requests.

Each instruction that changes files (RUN, COPY, ADD, and WORKDIR when the
directory is missing) makes one layer, in --format (eStargz by default, so
the result mounts lazily too); the others add an empty_layer history entry.
Stages the target does not depend on are skipped. A step whose parent
image, instruction and copied content were built before is taken from the
build cache without running (--no-cache runs everything, and still keeps
what it made for later builds, as docker build does; 'strata prune'
empties the cache).

Supported: FROM (tags, digests, AS, earlier stages, scratch, ARGs before
FROM, --platform of this machine or one binfmt emulates), RUN (shell and
exec forms, heredocs, --mount=type=cache|bind|secret|tmpfs (a bind is
read-only, or with rw writable and its writes dropped), --network=none),
COPY and ADD (.dockerignore, --from=STAGE|IMAGE, --chown, --chmod, --link,
--exclude, COPY --parents, heredocs; ADD unpacks local tar archives and
downloads URLs, --checksum checks a download), ENV, ARG,
WORKDIR, USER, LABEL, EXPOSE, CMD, ENTRYPOINT, VOLUME, STOPSIGNAL,
HEALTHCHECK, SHELL, ONBUILD (kept in the config; a base image's or base
stage's triggers run before the stage's own steps); the escape directive.
Not supported: RUN --mount=type=ssh, ADD of git repositories (and
--keep-git-dir), ADD --unpack.

With SOURCE_DATE_EPOCH (the environment, --source-date-epoch, the build
argument, or a global ARG's default) the result is reproducible; the
environment's is the build argument's default, as docker buildx passes it. The image digest is printed last.

Examples:
  strata build -t localhost:5000/app:v1 --push .
  strata build -f build/Dockerfile --build-arg VERSION=1.2 --target release -t registry.example.com/app:1.2 --push .
  strata build --secret id=npmrc,src=$HOME/.npmrc --iidfile app.digest -q --oci-layout ./app-layout:v1 .
  git archive HEAD | strata build -t localhost:5000/app:head --push -
  GITHUB_TOKEN=... strata build --secret id=gh,env=GITHUB_TOKEN -f ci/Containerfile .
  strata prune`,
		run: runBuild,
	})
	register(&command{
		name:    "prune",
		summary: "empty the build cache",
		usage:   "",
		help: `Empties the build cache of 'strata build': the next build runs every step.
The directories of RUN --mount=type=cache go too. Images and layers the
cache pointed at stay in the store.

Examples:
  strata prune`,
		run: runPrune,
	})
}

func runBuild(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["build"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	var o build.Options
	file := fs.StringP("file", "f", "", "the Dockerfile, - for standard input (default CONTEXT/Dockerfile, else CONTEXT/Containerfile)")
	ignoreFile := fs.String("ignorefile", "", "the context's ignore file (default the Dockerfile's own FILE.dockerignore, else CONTEXT/.containerignore, else CONTEXT/.dockerignore)")
	fs.StringArrayVarP(&o.Tags, "tag", "t", nil, "reference of the result, pushed with --push (repeatable; without --push the image stays in the local store, mountable by digest)")
	buildArgs := fs.StringArray("build-arg", nil, "build argument K=V, or K to take it from the environment (repeatable)")
	fs.StringVar(&o.Target, "target", "", "the stage to build (default the last)")
	fs.StringVar(&o.Platform, "platform", "", "platform of the bases and the result, os/arch[/variant] (default this machine's)")
	fs.StringVar(&o.Format, "format", "", "layer format: estargz (the default; gzip for a layer whose names a table of contents cannot hold), gzip, zstd, zstd:chunked or uncompressed")
	fs.BoolVar(&o.Push, "push", false, "push the result to every --tag")
	fs.StringVar(&o.OCILayout, "oci-layout", "", "also write the result to the OCI image layout PATH[:TAG]")
	fs.BoolVar(&o.NoCache, "no-cache", false, "run every step, using no cached one (what it makes is still cached)")
	secrets := fs.StringArray("secret", nil, "secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR (repeatable)")
	iidfile := fs.String("iidfile", "", "write the image's manifest digest to this file")
	fs.BoolVarP(&o.Quiet, "quiet", "q", false, "print only the image digest (a failing RUN's output is still shown)")
	fs.BoolVar(&o.Insecure, "insecure", false, "reach the registries over plain HTTP, or HTTPS without verifying their certificates")
	fs.StringVar(&o.Runtime, "runtime", "", "OCI runtime for RUN: runc, crun or a path (default: runc, else crun)")
	fs.BoolVar(&o.Record, "record", false, "note the files the first RUN on each FROM image opens, for later builds FROM it to prefetch (see 'strata mount --record')")
	fs.BoolVar(&o.RecordPush, "record-push", false, "with --record: push the list as a referrer of the FROM image too")
	sde := fs.String("source-date-epoch", "", "clamp new layers' times and date the image and its new history to these seconds since 1970, for a reproducible image; also the SOURCE_DATE_EPOCH build argument (default $SOURCE_DATE_EPOCH, unless --build-arg SOURCE_DATE_EPOCH is given)")
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	if o.RecordPush && !o.Record {
		return errors.New("--record-push needs --record")
	}
	if o.Push && len(o.Tags) == 0 {
		return fmt.Errorf("--push needs at least one --tag")
	}
	for _, t := range o.Tags {
		if _, err := remote.ParsePushReference(t); err != nil {
			return fmt.Errorf("--tag: %w", err)
		}
	}
	var ctxDir string
	var stdinDockerfile []byte
	stdinArchive := false
	if fs.Arg(0) == "-" {
		// docker build -: a context archive, or a Dockerfile and no
		// context, on standard input.
		if *file == "-" {
			return errors.New("the context and the Dockerfile cannot both come from standard input (CONTEXT - and -f -)")
		}
		dir, done, err := build.StdinContextDir("")
		if err != nil {
			return err
		}
		defer done()
		if stdinDockerfile, stdinArchive, err = build.StdinContext(ctx, os.Stdin, dir, maxDockerfile); err != nil {
			return err
		}
		if !stdinArchive && *file != "" {
			return errors.New("-f names a file of the context, but standard input holds a Dockerfile, not a context archive")
		}
		if *file != "" && !filepath.IsAbs(*file) {
			*file = filepath.Join(dir, *file) // a path in the archive, as docker build takes it
		}
		ctxDir = dir
	} else {
		var err error
		if a := fs.Arg(0); strings.Contains(a, "://") || strings.HasPrefix(a, "git@") {
			return fmt.Errorf("build context %s: a URL context (git or http) is not supported; give a directory, or - for an archive on standard input", a)
		}
		if ctxDir, err = absPath("CONTEXT", fs.Arg(0)); err != nil {
			return err
		}
		if st, err := os.Stat(ctxDir); err != nil || !st.IsDir() {
			return fmt.Errorf("build context %s is not a directory", fs.Arg(0))
		}
	}
	o.Context = ctxDir
	var err error
	switch {
	case fs.Arg(0) == "-" && !stdinArchive:
		o.Dockerfile = stdinDockerfile
		o.DockerfileName = "Dockerfile (standard input)"
	case *file == "-":
		o.Dockerfile, err = io.ReadAll(io.LimitReader(os.Stdin, maxDockerfile+1))
		o.DockerfileName = "Dockerfile (standard input)"
		*file = ""
	default:
		*file = findDockerfile(ctxDir, *file)
		o.DockerfileName = *file
		if stdinArchive {
			rel, _ := filepath.Rel(ctxDir, *file)
			o.DockerfileName = rel + " (of the context archive on standard input)"
			if _, err := os.Stat(*file); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("the context archive on standard input has no %s", rel)
			}
		}
		var f *os.File
		if f, err = os.Open(*file); err == nil {
			o.Dockerfile, err = io.ReadAll(io.LimitReader(f, maxDockerfile+1))
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("reading the Dockerfile: %w", err)
	}
	if len(o.Dockerfile) > maxDockerfile {
		return fmt.Errorf("%s is over %d bytes", o.DockerfileName, maxDockerfile)
	}
	o.IgnoreFile = *ignoreFile
	if o.IgnoreFile == "" {
		o.IgnoreFile = build.FindIgnoreFile(ctxDir, *file)
	} else if _, err := os.Stat(o.IgnoreFile); err != nil {
		return fmt.Errorf("--ignorefile: %w", err)
	}
	if o.OCILayout, err = absLayout(o.OCILayout, fs.Changed("oci-layout")); err != nil {
		return err
	}
	if o.BuildArgs, err = parseBuildArgs(*buildArgs); err != nil {
		return err
	}
	if o.Secrets, err = parseSecrets(*secrets); err != nil {
		return err
	}
	for _, s := range o.Secrets {
		if s.Env != "" {
			df.withheld = append(df.withheld, s.Env)
		}
	}
	// $SOURCE_DATE_EPOCH is the build argument's default, as buildctl and
	// docker buildx pass it on: an explicit --build-arg wins.
	if _, set := o.BuildArgs["SOURCE_DATE_EPOCH"]; *sde != "" || !set {
		if o.SourceDateEpoch, err = sourceDateEpoch(*sde); err != nil {
			return err
		}
	}
	cl, err := df.ensure(ctx)
	if err != nil {
		return err
	}
	// A build's own lines start on a line of their own, whether the
	// output of the RUN before them ended its last line or not.
	out := &lineWriter{w: os.Stderr}
	defer out.end() // before an error's line
	o.Stdout, o.Stderr = out, out
	o.Log = func(line string) { out.line(line, "") }
	// On a terminal the push's updates share a line, and what was pushed,
	// mounted or streamed keeps a line of its own (reporter), as commit
	// shows them; a build line after them starts a line of its own.
	if term.IsTerminal(int(os.Stderr.Fd())) {
		report, endReport := reporter(out, true)
		o.Progress = report
		o.Log = func(line string) {
			endReport()
			out.line(line, "")
		}
	}
	if *iidfile != "" {
		// As docker build: a failed build leaves no digest of an earlier
		// one. Only a file is removed: a device, a fifo or a directory
		// named by mistake (/dev/stdout) is not replaced by one.
		st, err := os.Lstat(*iidfile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return fmt.Errorf("--iidfile: %w", err)
		case !st.Mode().IsRegular():
			return fmt.Errorf("--iidfile %s: not a regular file, and not replaced by one", *iidfile)
		default:
			if err := os.Remove(*iidfile); err != nil {
				return fmt.Errorf("--iidfile: %w", err)
			}
		}
	}
	signals, stop := steprun.NotifySignals()
	defer stop()
	o.Signals = signals
	res, err := build.Build(ctx, cl, o)
	if err != nil {
		return err
	}
	if *iidfile != "" {
		// The digest alone, no newline, as docker build and buildah write it.
		if err := os.WriteFile(*iidfile, []byte(res.Digest.String()), 0o644); err != nil {
			return fmt.Errorf("--iidfile: %w", err)
		}
	}
	if !o.Quiet {
		for _, p := range res.Pushed {
			o.Log("pushed " + p)
		}
		o.Log(fmt.Sprintf("%s run, %s from the cache", plural(res.Steps, "step"), plural(res.Cached, "step")))
		if !o.Push && len(o.Tags) > 0 {
			// Tags name images in registries only: without --push, the
			// image is in the local store, found by its digest.
			tag, _ := remote.ParseReference(o.Tags[0])
			o.Log(fmt.Sprintf("not pushed (no --push): the image is kept here, by its digest: strata mount %s DIR mounts it", tag.Context().Digest(res.Digest.String())))
		}
	}
	fmt.Fprintln(stdout, res.Digest)
	return nil
}

// findDockerfile returns the Dockerfile to read: with no -f, the
// context's Dockerfile, else its Containerfile (buildah's name); a
// relative -f is taken from the working directory (docker build), else,
// when nothing is there, from the context (buildah).
func findDockerfile(ctxDir, file string) string {
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if file == "" {
		if df := filepath.Join(ctxDir, "Dockerfile"); exists(df) || !exists(filepath.Join(ctxDir, "Containerfile")) {
			return df
		}
		return filepath.Join(ctxDir, "Containerfile")
	}
	if !filepath.IsAbs(file) && !exists(file) && exists(filepath.Join(ctxDir, file)) {
		return filepath.Join(ctxDir, file)
	}
	return file
}

// maxDockerfile bounds the Dockerfile read.
const maxDockerfile = 4 << 20

// parseBuildArgs reads --build-arg K=V, and K alone from the environment
// (skipped when unset), as docker build does.
func parseBuildArgs(args []string) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("--build-arg %q: want NAME=VALUE or NAME", a)
		}
		if !ok {
			if v, ok = os.LookupEnv(k); !ok {
				continue
			}
		}
		out[k] = v
	}
	return out, nil
}

// parseSecrets reads --secret as docker buildx does:
// id=ID[,type=file|env][,src=FILE|,env=VAR]. A file secret is checked to
// be a readable regular file now; an environment secret is read from the
// environment when a RUN mounts it. With neither src nor env, the
// variable ID is taken when it is set, else the file ID.
func parseSecrets(args []string) (map[string]build.Secret, error) {
	out := map[string]build.Secret{}
	for _, a := range args {
		var id, typ string
		var s build.Secret
		for _, f := range strings.Split(a, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "id":
				id = v
			case "src", "source":
				s.File = v
			case "env":
				s.Env = v
			case "type":
				if v != "file" && v != "env" {
					return nil, fmt.Errorf("--secret %q: type %q: want file or env", a, v)
				}
				typ = v
			default:
				return nil, fmt.Errorf("--secret %q: unknown field %q (want id=ID,src=FILE or id=ID,env=VAR)", a, k)
			}
		}
		if id == "" {
			return nil, fmt.Errorf("--secret %q: no id= (want id=ID,src=FILE or id=ID,env=VAR)", a)
		}
		if typ == "env" && s.Env == "" {
			s.Env, s.File = s.File, ""
		}
		switch {
		case s.File != "" && s.Env != "":
			return nil, fmt.Errorf("--secret %q: src= and env= both given", a)
		case typ == "file" && s.Env != "":
			return nil, fmt.Errorf("--secret %q: type=file with env=", a)
		case s.File == "" && s.Env == "":
			if _, ok := os.LookupEnv(id); ok && typ != "file" {
				s.Env = id
			} else {
				s.File = id
			}
		}
		if s.File != "" {
			abs, err := filepath.Abs(s.File)
			if err != nil {
				return nil, err
			}
			if st, err := os.Stat(abs); err != nil || !st.Mode().IsRegular() {
				return nil, fmt.Errorf("--secret %s: %s is not a readable file", id, s.File)
			}
			s.File = abs
		} else if _, ok := os.LookupEnv(s.Env); !ok {
			return nil, fmt.Errorf("--secret %s: the environment variable %s is not set", id, s.Env)
		}
		out[id] = s
	}
	return out, nil
}

func runPrune(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["prune"]
	fs := c.flags(stdout)
	var df daemonFlags
	df.add(fs)
	if err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	if err := df.resolve(); err != nil {
		return err
	}
	n, busy, err := build.PruneCache(df.root)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "build cache emptied (%d entries)\n", n)
	if busy > 0 {
		fmt.Fprintf(stdout, "%d RUN --mount=type=cache directories kept: a running build uses them\n", busy)
	}
	return nil
}

// lineWriter is the build's output: the commands' and its own lines. It
// remembers whether the last write ended its line, so that a line of the
// build's own never continues a command's last words.
type lineWriter struct {
	mu  sync.Mutex
	w   io.Writer
	mid bool // the last byte written was not a newline
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.w.Write(p)
	if n > 0 {
		l.mid = p[n-1] != '\n'
	}
	return n, err
}

// end ends the line a command's output left open.
func (l *lineWriter) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mid {
		fmt.Fprintln(l.w)
		l.mid = false
	}
}

// line writes prefix and s as a line of its own.
func (l *lineWriter) line(s, prefix string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mid {
		prefix = "\n" + prefix
	}
	fmt.Fprintf(l.w, "%s%s\n", prefix, s)
	l.mid = false
}
