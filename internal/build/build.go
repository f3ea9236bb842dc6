package build

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
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
)

// Options says what to build and where the result goes.
type Options struct {
	Context        string            // the build context directory
	Dockerfile     []byte            // its text
	DockerfileName string            // for messages: "Dockerfile", "-", a path
	Tags           []string          // references to push to (with Push) or to print
	BuildArgs      map[string]string // --build-arg K=V
	Target         string            // the stage to build; default the last
	Platform       string            // os/arch[/variant]; default the daemon's
	Format         string            // layer format, as strata commit's; default estargz
	Push           bool              // push to every tag
	OCILayout      string            // also write the result to this OCI layout PATH[:TAG]
	NoCache        bool              // run every step
	Secrets        map[string]string // --secret id=ID,src=FILE: ID to a host file
	// SourceDateEpoch, in seconds, clamps new layers' times and sets every
	// new config and history time; default $SOURCE_DATE_EPOCH, or the
	// SOURCE_DATE_EPOCH build argument.
	SourceDateEpoch *int64
	Insecure        bool   // plain HTTP to the tags' registries and FROM's
	Runtime         string // OCI runtime for RUN steps
	Quiet           bool   // no step lines and no RUN output (shown when a RUN fails)
	// Signals are passed to a RUN's command (see run.NotifySignals): ^C
	// ends the command, and so the build.
	Signals <-chan os.Signal
	// Stdout gets RUN output; Log gets a line per step and warnings;
	// Progress (default Log) gets the push's progress lines, which a
	// terminal may show one over the other.
	Stdout, Stderr io.Writer
	Log            func(string)
	Progress       func(string)
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
	cl      *daemon.Client
	o       Options
	root    string // the daemon's state root
	work    string // this build's directory under root/build/work
	stages  []instructions.Stage
	meta    []instructions.KeyValuePairOptional // global ARGs, defaults resolved
	done    map[int]*stageState
	ro      map[string]string // read-only mounts of images, by REPO@DIGEST
	mounted []string          // every mount made, for cleanup
	n       int               // mount directories made
	cache   *cache
	created time.Time
	epoch   bool // created comes from SOURCE_DATE_EPOCH
	used    map[string]bool
	ignore  []string // .dockerignore's patterns
	steps   int
	stepNo  int
	res     Result
}

// stageState is a stage's image so far.
type stageState struct {
	idx      int
	image    string // REPO@DIGEST in the store
	platform string
	config   v1.ConfigFile
	pending  []v1.History // empty_layer entries since the last commit
	dir      string       // its writable mount, "" when none
	spent    string       // a committed writable mount not yet dropped
	mkdir    []workdir    // WORKDIRs to create before the next file step
	args     []instructions.KeyValuePairOptional
	stage    commit.Stage
	author   string
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
	if o.Format == "" {
		o.Format = "estargz"
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return nil, err
	}
	b := &builder{cl: cl, o: o, root: st.Root, done: map[int]*stageState{}, ro: map[string]string{}, used: map[string]bool{}}
	if err := b.parse(); err != nil {
		return nil, err
	}
	if err := b.setTime(); err != nil {
		return nil, err
	}
	if b.ignore, err = ReadDockerignore(o.Context); err != nil {
		return nil, fmt.Errorf("%w: .dockerignore: %v", ErrBuild, err)
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
	if !o.NoCache {
		if b.cache, err = openCache(filepath.Join(st.Root, "build")); err != nil {
			return nil, err
		}
	}
	target, err := b.targetStage()
	if err != nil {
		return nil, err
	}
	needed, err := b.needed(target)
	if err != nil {
		return nil, err
	}
	for _, i := range needed {
		b.steps += 1 + len(b.stages[i].Commands)
	}
	for _, i := range needed {
		if err := b.runStage(ctx, i); err != nil {
			return nil, err
		}
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
	if b.cache != nil {
		if err := b.cache.save(); err != nil {
			b.o.Log("warning: saving the build cache: " + err.Error())
		}
	}
	return &b.res, nil
}

// setTime fixes the time of every new config and history entry.
func (b *builder) setTime() error {
	sde := b.o.SourceDateEpoch
	if sde == nil {
		if v, ok := b.o.BuildArgs["SOURCE_DATE_EPOCH"]; ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("%w: build argument SOURCE_DATE_EPOCH=%q: want whole seconds since 1970", ErrBuild, v)
			}
			sde = &n
			b.used["SOURCE_DATE_EPOCH"] = true
		}
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
	stages, meta, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return b.locate(err)
	}
	if len(stages) == 0 {
		return fmt.Errorf("%w: %s has no FROM", ErrBuild, b.o.DockerfileName)
	}
	b.stages = stages
	// Global ARGs: defaults expanded with the ARGs before them, overridden
	// by --build-arg.
	env := b.predefined()
	for _, a := range meta {
		for _, kv := range a.Args {
			v, ok := b.o.BuildArgs[kv.Key]
			if ok {
				b.used[kv.Key] = true
			} else if kv.Value != nil {
				w, _, err := shell.NewLex(res.EscapeToken).ProcessWord(*kv.Value, shell.EnvsFromSlice(env))
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

// platform is the build's target platform.
func (b *builder) platform() v1.Platform {
	if b.o.Platform != "" {
		if p, err := v1.ParsePlatform(b.o.Platform); err == nil {
			return *p
		}
	}
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// predefined are the platform ARGs BuildKit defines, as K=V.
func (b *builder) predefined() []string {
	p := b.platform()
	host := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	return []string{
		"TARGETPLATFORM=" + p.String(), "TARGETOS=" + p.OS, "TARGETARCH=" + p.Architecture, "TARGETVARIANT=" + p.Variant,
		"BUILDPLATFORM=" + host.String(), "BUILDOS=" + host.OS, "BUILDARCH=" + host.Architecture, "BUILDVARIANT=",
	}
}

func predefinedArg(k string) bool {
	switch k {
	case "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "SOURCE_DATE_EPOCH":
		return true
	}
	return false
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
		if j := b.stageRef(base, i); j >= 0 {
			if err := visit(j); err != nil {
				return err
			}
		}
		for _, cmd := range s.Commands {
			for _, from := range sourcesOf(cmd) {
				if j := b.stageRef(from, i); j >= 0 {
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

// sourcesOf are the stages or images a command reads from.
func sourcesOf(cmd instructions.Command) []string {
	var out []string
	switch c := cmd.(type) {
	case *instructions.CopyCommand:
		if c.From != "" {
			out = append(out, c.From)
		}
	case *instructions.RunCommand:
		for _, m := range instructions.GetMounts(c) {
			if m.From != "" {
				out = append(out, m.From)
			}
		}
	}
	return out
}

// expandMeta expands a FROM word with the global ARGs.
func (b *builder) expandMeta(word string, loc []parser.Range) (string, error) {
	env := b.metaEnv()
	w, _, err := shell.NewLex('\\').ProcessWord(word, shell.EnvsFromSlice(env))
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

// setVar sets k in env (K=V entries), replacing an earlier value.
func setVar(env []string, k, v string) []string {
	for i, e := range env {
		if name, _, _ := strings.Cut(e, "="); name == k {
			env = slices.Clone(env)
			env[i] = k + "=" + v
			return env
		}
	}
	return append(slices.Clip(env), k+"="+v)
}

func lookup(env []string, k string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if name, v, _ := strings.Cut(env[i], "="); name == k {
			return v, true
		}
	}
	return "", false
}

// step announces the next step.
func (b *builder) step(s instructions.Stage, text string) {
	b.stepNo++
	if b.o.Quiet {
		return
	}
	prefix := fmt.Sprintf("STEP %d/%d", b.stepNo, b.steps)
	if s.Name != "" {
		prefix += " [" + s.Name + "]"
	}
	b.o.Log(prefix + ": " + clip(oneLine(text), 300))
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// runStage runs stage i.
func (b *builder) runStage(ctx context.Context, i int) error {
	s := b.stages[i]
	b.step(s, s.SourceCode)
	st, err := b.from(ctx, i)
	if err != nil {
		return err
	}
	b.done[i] = st
	for _, cmd := range s.Commands {
		line := 0
		if loc := cmd.Location(); len(loc) > 0 {
			line = loc[0].Start.Line
		}
		text := commandText(cmd)
		b.step(s, text)
		if err := b.dispatch(ctx, st, cmd); err != nil {
			var se *StepError
			if errors.As(err, &se) {
				se.File, se.Line, se.Step = b.o.DockerfileName, line, text
				return se
			}
			return &StepError{File: b.o.DockerfileName, Line: line, Step: text, Err: err}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// commandText is the instruction as written, on one line.
func commandText(cmd instructions.Command) string {
	if s, ok := cmd.(fmt.Stringer); ok {
		return s.String()
	}
	return strings.ToUpper(cmd.Name())
}

// from starts stage i at its base: scratch, an earlier stage or an image.
func (b *builder) from(ctx context.Context, i int) (*stageState, error) {
	s := b.stages[i]
	base, err := b.expandMeta(s.BaseName, s.Location)
	if err != nil {
		return nil, err
	}
	platform := b.o.Platform
	if s.Platform != "" {
		if platform, err = b.expandMeta(s.Platform, s.Location); err != nil {
			return nil, err
		}
	}
	if err := checkPlatform(platform); err != nil {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: err}
	}
	st := &stageState{idx: i, platform: platform}
	if j := b.stageRef(base, i); j >= 0 {
		prev := b.done[j]
		if err := b.finish(ctx, prev); err != nil {
			return nil, err
		}
		st.image, st.config = prev.image, *prev.config.DeepCopy()
		return st, nil
	}
	if base == "" {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: fmt.Errorf("%w: FROM names no image once its ARGs are expanded", ErrBuild)}
	}
	r, err := b.cl.Resolve(ctx, daemon.ResolveRequest{Ref: base, Platform: platform, Insecure: b.o.Insecure})
	if err != nil {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: err}
	}
	if err := json.Unmarshal(r.Config, &st.config); err != nil {
		return nil, fmt.Errorf("config of %s: %w", base, err)
	}
	st.image = r.Ref
	if n := len(st.config.Config.OnBuild); n > 0 {
		// BuildKit runs a base's triggers and clears them; they are not
		// run here, and cleared all the same.
		b.o.Log(fmt.Sprintf("warning: %s has %d ONBUILD trigger(s), which strata build does not run", base, n))
		st.config.Config.OnBuild = nil
	}
	return st, nil
}

func line(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

// checkPlatform refuses a platform this machine cannot run without
// binfmt emulation.
func checkPlatform(platform string) error {
	if platform == "" {
		return nil
	}
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		return fmt.Errorf("platform %q: %w", platform, err)
	}
	if p.OS != "" && p.OS != "linux" {
		return fmt.Errorf("platform %s: only linux images are built here", platform)
	}
	if p.Architecture == "" || p.Architecture == runtime.GOARCH {
		return nil
	}
	if _, err := os.Stat("/proc/sys/fs/binfmt_misc/qemu-" + qemuArch(p.Architecture)); err == nil {
		return nil
	}
	return fmt.Errorf("platform %s is not this machine's (linux/%s) and no binfmt emulation for it is registered (install qemu-user-static and binfmt-support)", platform, runtime.GOARCH)
}

func qemuArch(arch string) string {
	switch arch {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i386"
	}
	return arch
}

// history is a history entry of this build.
func (b *builder) history(createdBy string, empty bool) v1.History {
	return v1.History{Created: v1.Time{Time: b.created}, CreatedBy: createdBy, EmptyLayer: empty}
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
	env := st.argEnv()
	for _, e := range st.config.Config.Env {
		k, v, _ := strings.Cut(e, "=")
		env = setVar(env, k, v)
	}
	lex := shell.NewLex('\\')
	lex.SkipProcessQuotes = raw
	getter := shell.EnvsFromSlice(env)
	return func(word string) (string, error) {
		w, _, err := lex.ProcessWord(word, getter)
		return w, err
	}
}

// dispatch runs one instruction.
func (b *builder) dispatch(ctx context.Context, st *stageState, cmd instructions.Command) error {
	switch c := cmd.(type) {
	case *instructions.ArgCommand:
		return b.arg(st, c)
	case *instructions.RunCommand:
		return b.run(ctx, st, c)
	case *instructions.CopyCommand:
		return b.copy(ctx, st, c)
	case *instructions.AddCommand:
		return b.add(ctx, st, c)
	case *instructions.WorkdirCommand:
		if err := st.stage.Apply(&st.config.Config, c, st.argEnv()); err != nil {
			return err
		}
		st.mkdir = append(st.mkdir, workdir{st.config.Config.WorkingDir, st.config.Config.User})
		st.pending = append(st.pending, b.history("WORKDIR "+st.config.Config.WorkingDir, true))
		return nil
	case *instructions.MaintainerCommand:
		st.author = c.Maintainer
		st.pending = append(st.pending, b.history(commandText(c), true))
		return nil
	default:
		if err := st.stage.Apply(&st.config.Config, c, st.argEnv()); err != nil {
			return err
		}
		st.pending = append(st.pending, b.history(commandText(c), true))
		return nil
	}
}

// arg declares build arguments in the stage.
func (b *builder) arg(st *stageState, c *instructions.ArgCommand) error {
	x := st.expander()
	for _, kv := range c.Args {
		var val *string
		if v, ok := b.o.BuildArgs[kv.Key]; ok {
			val = &v
			b.used[kv.Key] = true
		} else if kv.Value != nil {
			v, err := x(*kv.Value)
			if err != nil {
				return err
			}
			val = &v
		} else {
			for _, m := range b.meta {
				if m.Key == kv.Key && m.Value != nil {
					v := *m.Value
					val = &v
				}
			}
			if val == nil {
				if v, ok := lookup(b.predefined(), kv.Key); ok {
					val = &v
				}
			}
		}
		st.args = append(st.args, instructions.KeyValuePairOptional{Key: kv.Key, Value: val})
	}
	st.pending = append(st.pending, b.history(commandText(c), true))
	return nil
}

// mount gives st a writable mount of its image, and makes the WORKDIRs
// waiting for one.
func (b *builder) mount(ctx context.Context, st *stageState) error {
	if st.dir != "" {
		return nil
	}
	b.n++
	dir := filepath.Join(b.work, strconv.Itoa(b.n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if _, err := b.cl.Mount(ctx, daemon.MountRequest{Ref: st.image, Dir: dir, Writable: true, Platform: st.platform, Insecure: b.o.Insecure}); err != nil {
		return fmt.Errorf("mounting %s: %w", st.image, err)
	}
	b.mounted = append(b.mounted, dir)
	st.dir = dir
	if st.spent != "" {
		// Dropped only now that the new mount holds the layers they
		// share: they stay mounted instead of being taken down and
		// mounted again.
		spent := st.spent
		st.spent = ""
		if err := b.unmount(ctx, spent); err != nil {
			return err
		}
	}
	return b.makeWorkdirs(st)
}

// workdir is a WORKDIR to create, and the USER then in force.
type workdir struct{ dir, user string }

// makeWorkdirs creates the stage's WORKDIRs that do not exist yet, mode
// 0755, owned by the USER in force at the WORKDIR (root by default), as
// BuildKit's dispatchWorkdir does; parents made on the way too.
func (b *builder) makeWorkdirs(st *stageState) error {
	for _, w := range st.mkdir {
		var uid, gid uint32
		if w.user != "" {
			var err error
			if uid, gid, err = steprun.LookupUser(st.dir, w.user); err != nil {
				return fmt.Errorf("WORKDIR %s: %w", w.dir, err)
			}
		}
		if err := mkdirAllIn(st.dir, w.dir, int(uid), int(gid)); err != nil {
			return fmt.Errorf("WORKDIR %s: %w", w.dir, err)
		}
	}
	st.mkdir = nil
	return nil
}

// commitStep turns st's writable mount into the stage's next image, with
// the pending history entries and createdBy's own.
func (b *builder) commitStep(ctx context.Context, st *stageState, createdBy, key string) error {
	req := daemon.CommitRequest{
		Dir: st.dir, Keep: true, Format: b.o.Format, Config: &st.config.Config,
		History: st.pending, CreatedBy: createdBy, SourceDateEpoch: b.o.SourceDateEpoch, Author: st.author,
	}
	res, err := b.cl.Commit(ctx, req, nil)
	if err != nil {
		return fmt.Errorf("committing the step: %w", err)
	}
	// The committed mount is dropped once the stage's next mount is made
	// (or when the build ends).
	st.spent, st.dir = st.dir, ""
	st.image, st.pending = res.Ref, nil
	if b.cache != nil && key != "" {
		b.cache.put(key, res.Ref)
	}
	return nil
}

func (b *builder) unmount(ctx context.Context, dir string) error {
	if err := b.cl.Unmount(ctx, dir, true); err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	b.mounted = slices.DeleteFunc(b.mounted, func(d string) bool { return d == dir })
	return os.Remove(dir)
}

// cacheKey is the key of a step on st's current image: the image, the
// config and pending history the commit will carry, and what the step
// does (extra: the content digest of what it copies).
func (b *builder) cacheKey(st *stageState, what string, extra ...string) string {
	if b.cache == nil {
		return ""
	}
	cfg, _ := json.Marshal(st.config.Config)
	h := digest.SHA256.Digester()
	epoch := "now"
	if b.o.SourceDateEpoch != nil {
		epoch = strconv.FormatInt(*b.o.SourceDateEpoch, 10)
	}
	fmt.Fprintf(h.Hash(), "v1\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00", st.image, cfg, b.o.Format, what, st.author, epoch)
	for _, p := range st.pending {
		fmt.Fprintf(h.Hash(), "%s\x00", p.CreatedBy)
	}
	for _, m := range st.mkdir {
		fmt.Fprintf(h.Hash(), "mkdir %s %s\x00", m.dir, m.user)
	}
	for _, e := range extra {
		fmt.Fprintf(h.Hash(), "%s\x00", e)
	}
	return h.Digest().String()
}

// cached moves st to the image the cache holds for key, if any.
func (b *builder) cached(ctx context.Context, st *stageState, key string) bool {
	if b.cache == nil || key == "" {
		return false
	}
	ref, ok := b.cache.get(key)
	if !ok {
		return false
	}
	// The store must still hold the image: resolving it by digest asks it.
	r, err := b.cl.Resolve(ctx, daemon.ResolveRequest{Ref: ref, Platform: st.platform})
	if err != nil || r.Ref != ref {
		return false
	}
	if st.dir != "" {
		return false
	}
	st.image, st.pending, st.mkdir = ref, nil, nil
	b.res.Cached++
	if !b.o.Quiet {
		b.o.Log("  cached: " + ref)
	}
	return true
}

// finish commits what a stage has pending (metadata instructions and
// WORKDIRs after its last file step), so that its image is whole.
func (b *builder) finish(ctx context.Context, st *stageState) error {
	if len(st.mkdir) > 0 {
		// The layer is the last WORKDIR's; what came after it follows
		// as empty_layer entries.
		w := len(st.pending) - 1
		for w > 0 && !strings.HasPrefix(st.pending[w].CreatedBy, "WORKDIR ") {
			w--
		}
		after := slices.Clone(st.pending[w+1:])
		createdBy := st.pending[w].CreatedBy
		st.pending = st.pending[:w]
		key := b.cacheKey(st, "workdirs "+createdBy)
		if !b.cached(ctx, st, key) {
			if err := b.mount(ctx, st); err != nil {
				return err
			}
			b.res.Steps++
			if err := b.commitStep(ctx, st, createdBy, key); err != nil {
				return err
			}
		}
		st.pending = after
	}
	if len(st.pending) == 0 {
		return nil
	}
	key := b.cacheKey(st, "metadata")
	if b.cached(ctx, st, key) {
		return nil
	}
	n := len(st.pending)
	req := daemon.CommitRequest{
		Image: st.image, Keep: true, Config: &st.config.Config, History: st.pending[:n-1],
		CreatedBy: st.pending[n-1].CreatedBy, Author: st.author,
	}
	req.SourceDateEpoch = b.o.SourceDateEpoch
	res, err := b.cl.Commit(ctx, req, nil)
	if err != nil {
		return fmt.Errorf("committing the stage's config: %w", err)
	}
	st.image, st.pending = res.Ref, nil
	if b.cache != nil {
		b.cache.put(key, res.Ref)
	}
	return nil
}

// publish pushes the result to every tag and writes the OCI layout.
func (b *builder) publish(ctx context.Context) error {
	progress := b.o.Progress
	if progress == nil {
		progress = b.o.Log
	}
	if b.o.Quiet {
		progress = nil
	}
	if b.o.Push {
		for _, tag := range b.o.Tags {
			res, err := b.cl.Push(ctx, daemon.PushRequest{Image: b.res.Image, Ref: tag, Insecure: b.o.Insecure, SourceInsecure: b.o.Insecure}, progress)
			if err != nil {
				return fmt.Errorf("pushing %s: %w", tag, err)
			}
			b.res.Pushed = append(b.res.Pushed, res.Ref)
		}
	}
	if b.o.OCILayout != "" {
		if _, err := b.cl.Push(ctx, daemon.PushRequest{Image: b.res.Image, OCILayout: b.o.OCILayout, SourceInsecure: b.o.Insecure}, progress); err != nil {
			return fmt.Errorf("writing the OCI layout %s: %w", b.o.OCILayout, err)
		}
	}
	return nil
}

// sweep drops what builds whose strata process died (SIGKILL, a crash)
// left: their mounts, writable layers included, and working directories.
func (b *builder) sweep(ctx context.Context) {
	works := filepath.Join(b.root, "build", "work")
	dirs, err := os.ReadDir(works)
	if err != nil {
		return
	}
	var dead []string
	for _, d := range dirs {
		dir := filepath.Join(works, d.Name())
		if !steprun.OwnerAlive(dir) {
			dead = append(dead, dir+"/")
		}
	}
	if len(dead) == 0 {
		return
	}
	// Their RUNs' containers first: they hold the mounts.
	if _, err := steprun.Sweep(filepath.Join(b.root, "run")); err != nil {
		b.o.Log("warning: ending runs left behind: " + err.Error())
	}
	ms, err := b.cl.List(ctx)
	if err != nil {
		return
	}
	failed := map[string]bool{}
	for _, m := range ms {
		for _, d := range dead {
			if strings.HasPrefix(m.Dir, d) {
				if err := b.cl.Unmount(ctx, m.Dir, true); err != nil {
					failed[d] = true
					b.o.Log(fmt.Sprintf("warning: unmounting %s, left by a build that died: %v", m.Dir, err))
				}
			}
		}
	}
	for _, d := range dead {
		if failed[d] {
			continue // never remove through a mount
		}
		if err := os.RemoveAll(d); err != nil {
			b.o.Log(fmt.Sprintf("warning: removing %s, left by a build that died: %v", d, err))
		}
	}
	b.o.Log(fmt.Sprintf("dropped what %d build(s) whose strata process died left behind", len(dead)))
}

// cleanup unmounts what the build mounted and removes its directory.
func (b *builder) cleanup(ctx context.Context) error {
	var errs []error
	for _, dir := range slices.Clone(b.mounted) {
		if err := b.cl.Unmount(ctx, dir, true); err != nil {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", dir, err))
			continue
		}
		os.Remove(dir)
	}
	if b.work != "" && len(errs) == 0 { // never remove through a mount
		if err := os.RemoveAll(b.work); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

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
