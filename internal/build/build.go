package build

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/internal/commit"
	"github.com/stratafs/strata/internal/daemon"
	steprun "github.com/stratafs/strata/internal/run"
	"github.com/stratafs/strata/snapshotter"
)

// Options says what to build and where the result goes.
type Options struct {
	Context        string // the build context directory
	Dockerfile     []byte // its text
	DockerfileName string // for messages: "Dockerfile", "-", a path
	// IgnoreFile holds the context's exclude patterns (.dockerignore's
	// syntax); "" for none. FindIgnoreFile finds the one docker build,
	// BuildKit or buildah would take.
	IgnoreFile string
	Tags       []string          // references to push to (with Push) or to print
	BuildArgs  map[string]string // --build-arg K=V
	Target     string            // the stage to build; default the last
	Platform   string            // os/arch[/variant]; default the daemon's
	Format     string            // layer format, as strata commit's; default estargz
	Push       bool              // push to every tag
	OCILayout  string            // also write the result to this OCI layout PATH[:TAG]
	NoCache    bool              // run every step (the cache is still filled)
	Secrets    map[string]Secret // --secret: by ID
	// SourceDateEpoch, in seconds, clamps new layers' times and sets every
	// new config and history time. It is the SOURCE_DATE_EPOCH build
	// argument too (an ARG SOURCE_DATE_EPOCH in a stage sees it), as
	// buildctl and docker buildx pass $SOURCE_DATE_EPOCH on; one set in
	// BuildArgs as well must agree. Without either, a default of the
	// Dockerfile's global ARG SOURCE_DATE_EPOCH is used, as BuildKit uses it.
	SourceDateEpoch *int64
	Insecure        bool // plain HTTP to the tags' registries and FROM's
	// Record notes, for each stage whose first RUN step runs on its FROM
	// image itself, the files that step opens, and keeps the list with
	// the FROM image (see 'strata mount --record'): later builds FROM it,
	// here (and, with RecordPush, anywhere), prefetch those files.
	Record, RecordPush bool
	Runtime            string // OCI runtime for RUN steps
	Quiet              bool   // no step lines and no RUN output (shown when a RUN fails)
	// Signals are passed to a RUN's command (see run.NotifySignals); a
	// build interrupted by its caller ends ctx, which stops the command.
	Signals <-chan os.Signal
	// Stdout gets RUN output; Log gets a line per step and warnings;
	// Progress (default Log) gets the push's progress lines, which a
	// terminal may show one over the other.
	Stdout, Stderr io.Writer
	Log            func(string)
	Progress       func(string)
}

// Secret is where the value of a --secret comes from: a host file, else
// an environment variable of the building process. It is read when a RUN
// mounts it, and goes only to a tmpfs of the build or a RUN's environment.
type Secret struct {
	File string // a host file
	Env  string // with no File: the variable's name
}

// Result is what a build made.
type Result struct {
	// Image is REPO@DIGEST of the result in the daemon's store (the
	// repository is the final stage's base's).
	Image  string
	Digest digest.Digest
	// Pushed are the references pushed, REPO@DIGEST.
	Pushed []string
	// Steps and Cached count the steps run and the ones the cache answered.
	Steps, Cached int
}

// ErrBuild is wrapped by errors in the Dockerfile or in what it asks for
// (unknown instruction or stage, a missing file, a failing RUN).
var ErrBuild = errors.New("build failed")

// StepError is a step that failed: where it is in the Dockerfile, and for a
// RUN its exit status and the end of its output when it was not shown.
type StepError struct {
	File     string
	Line     int
	Step     string // the instruction as written
	ExitCode int    // a RUN's non-zero exit status; 0 otherwise
	Output   string // the end of a quiet RUN's output
	Err      error
}

func (e *StepError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d: %s: ", e.File, e.Line, clip(e.Step, 200))
	if e.ExitCode != 0 {
		fmt.Fprintf(&b, "the command exited with status %d", e.ExitCode)
	} else if ce := (*commit.ChangeError)(nil); errors.As(e.Err, &ce) {
		// The step is named already; "--change" is commit's word.
		b.WriteString(clip(ce.Err.Error(), 300))
	} else {
		b.WriteString(e.Err.Error())
	}
	if e.Output != "" {
		fmt.Fprintf(&b, "\noutput:\n%s", e.Output)
	}
	return b.String()
}

func (e *StepError) Unwrap() []error { return []error{ErrBuild, e.Err} }

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// builder is one build in progress.
type builder struct {
	target  int      // the stage whose image is the result
	held    []func() // releases the cache mounts' locks (holdCacheMount)
	cl      *daemon.Client
	o       Options
	root    string // the daemon's state root
	work    string // this build's directory under root/build/work
	stages  []instructions.Stage
	meta    []instructions.KeyValuePairOptional // global ARGs, defaults resolved
	done    map[int]*stageState
	ro      map[string]string // read-only mounts of images, by REPO@DIGEST
	mounted []string          // every mount made, for cleanup
	kmounts []string          // kernel mounts made here (rw bind mounts' overlays, the secrets tmpfs), for cleanup
	// secretFiles are the files on the secrets tmpfs, by secret and
	// metadata (secretFile).
	secretFiles map[string]string
	// recorded are the FROM images a RUN step's mount records for
	// (Options.Record): one recording per image and build.
	recorded map[string]bool
	n        int // mount directories made
	cache    *cache
	created  time.Time
	epoch    bool // created comes from SOURCE_DATE_EPOCH
	used     map[string]bool
	ignore   []string // .dockerignore's patterns
	filtered string   // the context without what ignore hides, once a bind mount needed it
	// metadataKey is the cache key of the metadata commit finish is
	// making: not a step of its own (see cached).
	metadataKey string
	steps       int
	stepNo      int
	res         Result
	// triggers are the ONBUILD instructions a stage FROM an earlier stage
	// runs first, by stage index (see needed).
	triggers map[int][]instructions.Command
	// escape is the Dockerfile's escape character (its escape directive,
	// else backslash): expansions use it, as BuildKit's do.
	escape rune
}

// stageState is a stage's image so far.
type stageState struct {
	idx   int
	image string // REPO@DIGEST in the store
	// base is the FROM image (REPO@DIGEST): its recorded prefetch list,
	// if it has one, serves the stage's mounts (their images start with
	// its layers).
	base     string
	platform string
	// resultPlatform is --platform for the target stage, whose image
	// is the build's result: its config says it (see
	// daemon.CommitRequest.ResultPlatform).
	resultPlatform string
	config         v1.ConfigFile
	pending        []v1.History // empty_layer entries since the last commit
	// healthStart is the start interval of the stage's last HEALTHCHECK
	// (which the config model cannot hold); nil before one.
	healthStart *time.Duration
	dir         string // its writable mount, "" when none
	spent       string // a committed writable mount not yet dropped
	// clean says dir holds no change to image (a WORKDIR's look found its
	// directory there): the next step may take it as its own mount.
	clean  bool
	run    bool // the next mount is for a RUN step
	args   []instructions.KeyValuePairOptional
	stage  commit.Stage
	author string
	// triggers are the ONBUILD instructions the stage runs first: those
	// its base stage declares, or those of its base image's config.
	triggers []instructions.Command
	escape   rune // the Dockerfile's escape character (builder.escape)
}

// Build runs the Dockerfile of o on the daemon cl.
func Build(ctx context.Context, cl *daemon.Client, o Options) (res *Result, err error) {
	if o.Log == nil {
		o.Log = func(string) {}
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	if o.DockerfileName == "" {
		o.DockerfileName = "Dockerfile"
	}
	// Checked before anything runs: a step's commit would refuse it only
	// after its command ran, and a build without a changing step never.
	if _, err := snapshotter.ParseLayerFormat(o.Format); err != nil {
		return nil, fmt.Errorf("--format: %w", err)
	}
	if o.Platform, err = normalizePlatform(o.Platform); err != nil {
		return nil, fmt.Errorf("--platform: %w", err)
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return nil, err
	}
	if o.SourceDateEpoch != nil {
		s := strconv.FormatInt(*o.SourceDateEpoch, 10)
		if v, ok := o.BuildArgs["SOURCE_DATE_EPOCH"]; ok && v != s {
			return nil, fmt.Errorf("%w: the source date epoch %s and the build argument SOURCE_DATE_EPOCH=%q disagree", ErrBuild, s, v)
		}
		o.BuildArgs = maps.Clone(o.BuildArgs)
		if o.BuildArgs == nil {
			o.BuildArgs = map[string]string{}
		}
		o.BuildArgs["SOURCE_DATE_EPOCH"] = s
	}
	b := &builder{cl: cl, o: o, root: st.Root, done: map[int]*stageState{}, ro: map[string]string{}, used: map[string]bool{}}
	if err := b.parse(); err != nil {
		return nil, err
	}
	if err := b.setTime(); err != nil {
		return nil, err
	}
	if b.ignore, err = ReadIgnoreFile(o.IgnoreFile); err != nil {
		return nil, fmt.Errorf("%w: the ignore file: %v", ErrBuild, err)
	}
	id := make([]byte, 6)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	b.sweep(ctx)
	b.work = filepath.Join(st.Root, "build", "work", hex.EncodeToString(id))
	if err := os.MkdirAll(b.work, 0o700); err != nil {
		return nil, err
	}
	if err := steprun.MarkOwner(b.work); err != nil {
		return nil, err
	}
	defer func() {
		if cerr := b.cleanup(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	// The steps that completed are cached even when a later one fails or
	// the push does, as BuildKit caches them: the build run again after a
	// fix starts at the step that failed.
	defer func() {
		if b.cache == nil {
			return
		}
		if serr := b.cache.save(); serr != nil {
			b.o.Log("warning: saving the build cache: " + serr.Error())
		}
	}()
	// --no-cache uses no entry of the cache but still fills it, as
	// docker build does: the next build finds what this one made.
	if b.cache, err = openCache(filepath.Join(st.Root, "build")); err != nil {
		return nil, err
	}
	target, err := b.targetStage()
	if err != nil {
		return nil, err
	}
	b.target = target
	if err := b.runNeeded(ctx, target); err != nil {
		return nil, err
	}
	final := b.done[target]
	if err := b.finish(ctx, final); err != nil {
		return nil, err
	}
	for k := range o.BuildArgs {
		if !b.used[k] && !predefinedArg(k) {
			b.o.Log(fmt.Sprintf("warning: build argument %s was not consumed by any ARG", k))
		}
	}
	b.res.Image = final.image
	b.res.Digest = digest.Digest(final.image[strings.LastIndex(final.image, "@")+1:])
	if err := b.publish(ctx); err != nil {
		return nil, err
	}
	return &b.res, nil
}

// setTime fixes the time of every new config and history entry: the
// SOURCE_DATE_EPOCH build argument (which Options.SourceDateEpoch has been
// made), else the default of a global ARG SOURCE_DATE_EPOCH, as BuildKit
// reads them; empty, or BuildKit's "context" (a local context has no
// time of its own), is none.
func (b *builder) setTime() error {
	v, ok := b.o.BuildArgs["SOURCE_DATE_EPOCH"]
	what := "build argument"
	if ok {
		b.used["SOURCE_DATE_EPOCH"] = true
	} else {
		for _, kv := range b.meta {
			if kv.Key == "SOURCE_DATE_EPOCH" && kv.Value != nil {
				v, ok, what = *kv.Value, true, "global ARG"
			}
		}
	}
	var sde *int64
	if ok && v != "" && v != "context" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%w: %s SOURCE_DATE_EPOCH=%q: want whole seconds since 1970", ErrBuild, what, v)
		}
		if err := daemon.CheckSourceDateEpoch(n); err != nil {
			return fmt.Errorf("%w: %s SOURCE_DATE_EPOCH: %v", ErrBuild, what, err)
		}
		sde = &n
	}
	b.o.SourceDateEpoch = sde
	b.created = time.Now().UTC()
	if sde != nil {
		b.created, b.epoch = time.Unix(*sde, 0).UTC(), true
	}
	return nil
}

// parse reads the Dockerfile with BuildKit's parser and instructions.
func (b *builder) parse() error {
	res, err := parser.Parse(bytes.NewReader(b.o.Dockerfile))
	if err != nil {
		return b.locate(err)
	}
	b.escape = res.EscapeToken
	stages, meta, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return b.locate(err)
	}
	if len(stages) == 0 {
		return fmt.Errorf("%w: %s has no FROM", ErrBuild, b.o.DockerfileName)
	}
	b.stages = stages
	b.triggers = map[int][]instructions.Command{}
	// Global ARGs: defaults expanded with the ARGs before them, overridden
	// by --build-arg.
	env := b.predefined()
	for _, a := range meta {
		for _, kv := range a.Args {
			v, ok := b.o.BuildArgs[kv.Key]
			if ok {
				b.used[kv.Key] = true
			} else if kv.Value != nil {
				w, _, err := shell.NewLex(b.escape).ProcessWord(*kv.Value, shell.EnvsFromSlice(env))
				if err != nil {
					return b.locate(parser.WithLocation(err, a.Location()))
				}
				v, ok = w, true
			} else if pv, has := lookup(env, kv.Key); has {
				v, ok = pv, true
			}
			kv := kv
			if ok {
				kv.Value = &v
				env = setVar(env, kv.Key, v)
			} else {
				kv.Value = nil
			}
			b.meta = append(b.meta, kv)
		}
	}
	return nil
}

// locate formats a parse error with its Dockerfile line.
func (b *builder) locate(err error) error {
	var le *parser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		return fmt.Errorf("%w: %s:%d: %v", ErrBuild, b.o.DockerfileName, le.Locations[0][0].Start.Line, unwrapAll(le))
	}
	return fmt.Errorf("%w: %s: %v", ErrBuild, b.o.DockerfileName, err)
}

// unwrapAll drops BuildKit's stack-carrying wrappers from a message.
func unwrapAll(le *parser.LocationError) string {
	return le.Unwrap().Error()
}

// targetStage is the index of the stage to build.
func (b *builder) targetStage() (int, error) {
	if b.o.Target == "" {
		return len(b.stages) - 1, nil
	}
	if i, ok := instructions.HasStage(b.stages, b.o.Target); ok {
		return i, nil
	}
	names := []string{}
	for _, s := range b.stages {
		if s.Name != "" {
			names = append(names, s.Name)
		}
	}
	if len(names) == 0 {
		return 0, fmt.Errorf("%w: target stage %q not found in %s: it names no stage (FROM IMAGE AS NAME names one)", ErrBuild, b.o.Target, b.o.DockerfileName)
	}
	return 0, fmt.Errorf("%w: target stage %q not found in %s (stages: %s)", ErrBuild, b.o.Target, b.o.DockerfileName, strings.Join(names, ", "))
}

// stageRef returns the index of the stage name refers to before stage
// before (by name, or by number), or -1.
func (b *builder) stageRef(name string, before int) int {
	if i, ok := instructions.HasStage(b.stages[:before], name); ok {
		return i
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 && n < before {
		return n
	}
	return -1
}

// sourceStage returns the stage a COPY --from or a RUN mount's from=
// names in stage before, or -1 for an image. As in BuildKit, a name or
// an index of a stage (stage names start with a letter) that is not an
// earlier one is an error, and so is an index that is no stage's.
func (b *builder) sourceStage(from string, before int, kind string) (int, error) {
	j := -1
	if n, err := strconv.Atoi(from); err == nil {
		if n < 0 || n >= len(b.stages) {
			return -1, fmt.Errorf("invalid stage index %d", n)
		}
		j = n
	} else if i, ok := instructions.HasStage(b.stages, from); ok {
		j = i
	}
	switch {
	case j == before:
		return -1, fmt.Errorf("circular dependency detected on stage: %s", b.stageName(before))
	case j > before:
		return -1, fmt.Errorf("cannot %s stage %q, it needs to be defined before current stage %q", kind, from, b.stageName(before))
	}
	return j, nil
}

// stageName is stage i's name, or its index when it has none.
func (b *builder) stageName(i int) string {
	if n := b.stages[i].Name; n != "" {
		return n
	}
	return strconv.Itoa(i)
}

// runNeeded runs stage target and the stages it depends on that have not
// run yet.
func (b *builder) runNeeded(ctx context.Context, target int) error {
	needed, err := b.needed(target)
	if err != nil {
		return err
	}
	needed = slices.DeleteFunc(needed, func(i int) bool { return b.done[i] != nil })
	for _, i := range needed {
		b.steps += 1 + len(b.stages[i].Commands) + len(b.triggers[i])
	}
	for _, i := range needed {
		if err := b.runStage(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// needed lists, in order, the stages target depends on and target: the
// others are skipped.
func (b *builder) needed(target int) ([]int, error) {
	need := map[int]bool{}
	var visit func(i int) error
	visit = func(i int) error {
		if need[i] {
			return nil
		}
		need[i] = true
		s := b.stages[i]
		base, err := b.expandMeta(s.BaseName, s.Location)
		if err != nil {
			return err
		}
		cmds := s.Commands
		if j := b.stageRef(base, i); j >= 0 {
			if err := visit(j); err != nil {
				return err
			}
			if _, ok := b.triggers[i]; !ok {
				t, err := b.parseTriggers(b.declaredTriggers(j), s.Location)
				if err != nil {
					return fmt.Errorf("%w: %s:%d: %v", ErrBuild, b.o.DockerfileName, line(s.Location), err)
				}
				b.triggers[i] = t
			}
			cmds = append(slices.Clip(b.triggers[i]), cmds...)
		}
		for _, cmd := range cmds {
			for _, src := range sourcesOf(cmd) {
				j, err := b.sourceStage(src.from, i, src.kind)
				if err != nil {
					return fmt.Errorf("%w: %s:%d: %v", ErrBuild, b.o.DockerfileName, line(cmd.Location()), err)
				}
				if j >= 0 {
					if err := visit(j); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if err := visit(target); err != nil {
		return nil, err
	}
	var out []int
	for i := range b.stages {
		if need[i] {
			out = append(out, i)
		}
	}
	return out, nil
}

// expandMeta expands a FROM word with the global ARGs.
func (b *builder) expandMeta(word string, loc []parser.Range) (string, error) {
	env := b.metaEnv()
	w, _, err := shell.NewLex(b.escape).ProcessWord(word, shell.EnvsFromSlice(env))
	if err != nil {
		return "", b.locate(parser.WithLocation(err, loc))
	}
	return w, nil
}

func (b *builder) metaEnv() []string {
	env := b.predefined()
	for _, kv := range b.meta {
		if kv.Value != nil {
			env = setVar(env, kv.Key, *kv.Value)
		}
	}
	return env
}

// argEnv is the stage's build arguments with values, K=V.
func (st *stageState) argEnv() []string {
	var env []string
	for _, kv := range st.args {
		if kv.Value != nil {
			env = setVar(env, kv.Key, *kv.Value)
		}
	}
	return env
}

// expander expands words as BuildKit does for the instructions that
// expand: build arguments, then Env (which wins).
func (st *stageState) expander() instructions.SingleWordExpander {
	return st.expanderWith(false)
}

// rawExpander expands the text of a heredoc whose delimiter is not
// quoted: variables only, quotes kept (BuildKit's ExpandRaw).
func (st *stageState) rawExpander() instructions.SingleWordExpander {
	return st.expanderWith(true)
}

func (st *stageState) expanderWith(raw bool) instructions.SingleWordExpander {
	// In one pass: an image's environment may hold many thousands of
	// entries, and a Dockerfile expands words at every instruction.
	env := commit.WithEnv(st.argEnv(), st.config.Config.Env)
	longest := 0
	for _, e := range env {
		longest = max(longest, len(e))
	}
	escape := st.escape
	if escape == 0 {
		escape = '\\'
	}
	lex := shell.NewLex(escape)
	lex.SkipProcessQuotes = raw
	getter := shell.EnvsFromSlice(env)
	return func(word string) (string, error) {
		// BuildKit's lexer expands whatever it is given: ARGs that name
		// each other several times double and redouble (A1=$A0$A0$A0$A0,
		// A2=$A1$A1$A1$A1, ...) until the process runs out of memory.
		// A word whose expansion may pass maxExpansion is refused first,
		// by a bound: each $ at most the longest value in scope.
		if bound := len(word) + strings.Count(word, "$")*longest; bound > maxExpansion {
			return "", fmt.Errorf("%.40q: its expansion may exceed %d MiB (%d references to values of up to %d bytes)",
				word, maxExpansion>>20, strings.Count(word, "$"), longest)
		}
		w, _, err := lex.ProcessWord(word, getter)
		return w, err
	}
}

// maxExpansion bounds what one word of a Dockerfile may expand to.
const maxExpansion = 64 << 20

// imageConfig is what a run needs of the stage's config.
func imageConfig(c v1.Config) ocispec.ImageConfig {
	return ocispec.ImageConfig{
		User: c.User, Env: slices.Clone(c.Env), Entrypoint: slices.Clone(c.Entrypoint),
		Cmd: slices.Clone(c.Cmd), WorkingDir: c.WorkingDir, StopSignal: c.StopSignal,
	}
}

// inImage joins p (absolute, or relative to WORKDIR) to the image's root.
func inImage(workdir, p string) string {
	trailing := strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || p == "."
	if !path.IsAbs(p) {
		wd := workdir
		if wd == "" {
			wd = "/"
		}
		p = path.Join(wd, p)
	}
	p = path.Clean(p)
	if trailing && p != "/" {
		p += "/"
	}
	return p
}
