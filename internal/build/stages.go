package build

// A build's stages: which are needed, FROM, and the dispatch of their
// instructions.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/stratafs/strata/internal/commit"
	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/run"
)

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

// sourcesOf are the stages or images a command reads from.
func sourcesOf(cmd instructions.Command) []source {
	var out []source
	switch c := cmd.(type) {
	case *instructions.CopyCommand:
		if c.From != "" {
			out = append(out, source{c.From, kindCopy})
		}
	case *instructions.RunCommand:
		for _, m := range instructions.GetMounts(c) {
			if m.From != "" {
				out = append(out, source{m.From, kindMount})
			}
		}
	}
	return out
}

// source is a stage or image a step reads, and how (for messages).
type source struct{ from, kind string }

const (
	kindCopy  = "copy from"
	kindMount = "mount from"
)

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
	// Announced once the base is resolved: its ONBUILD triggers, steps of
	// their own, are counted then.
	st, err := b.from(ctx, i)
	b.step(s, s.SourceCode)
	if err != nil {
		return err
	}
	if i == b.target {
		st.resultPlatform = b.o.Platform
	}
	b.done[i] = st
	triggers := st.triggers
	cmds := append(slices.Clip(triggers), s.Commands...)
	for k, cmd := range cmds {
		line := 0
		if loc := cmd.Location(); len(loc) > 0 {
			line = loc[0].Start.Line
		}
		text := commandText(cmd)
		if k < len(triggers) {
			text = "ONBUILD " + text
		}
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
	err = checkPlatform(platform)
	if err == nil {
		platform, err = normalizePlatform(platform)
	}
	if err != nil {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: err}
	}
	st := &stageState{idx: i, platform: platform, escape: b.escape, stage: commit.NewStage(b.escape)}
	if j := b.stageRef(base, i); j >= 0 {
		prev := b.done[j]
		if err := b.finish(ctx, prev); err != nil {
			return nil, err
		}
		st.image, st.base, st.config = prev.image, prev.base, *prev.config.DeepCopy()
		// Its build arguments too, as BuildKit's stages inherit them
		// (buildah 1.28's do not).
		st.args = slices.Clone(prev.args)
		// The base stage's ONBUILD instructions run first here, as
		// BuildKit and buildah run them; its config does not pass them on.
		st.config.Config.OnBuild = nil
		st.triggers = b.triggers[i]
		return st, nil
	}
	if base == "" {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: fmt.Errorf("%w: FROM names no image once its ARGs are expanded", ErrBuild)}
	}
	if _, err := name.ParseReference(base); err != nil {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: fmt.Errorf("%w: %q is not an image reference", ErrBuild, base)}
	}
	r, err := b.cl.Resolve(ctx, daemon.ResolveRequest{Ref: base, Platform: platform, Insecure: b.o.Insecure})
	if err != nil {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: err}
	}
	if err := json.Unmarshal(r.Config, &st.config); err != nil {
		return nil, fmt.Errorf("config of %s: %w", base, err)
	}
	// PATH is always set: a base without one gets the default, which the
	// stage's ENV and RUN steps see and its image keeps, as BuildKit and
	// buildah give it.
	if !slices.ContainsFunc(st.config.Config.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		st.config.Config.Env = append(st.config.Config.Env, "PATH="+run.DefaultPath)
	}
	st.image, st.base = r.Ref, r.Ref
	// The base's ONBUILD triggers run before the stage's instructions and
	// are not passed on; known only now, they are counted now.
	if st.triggers, err = b.parseTriggers(st.config.Config.OnBuild, s.Location); err != nil {
		return nil, &StepError{File: b.o.DockerfileName, Line: line(s.Location), Step: s.SourceCode, Err: err}
	}
	b.steps += len(st.triggers)
	st.config.Config.OnBuild = nil
	return st, nil
}

// maxTriggers bounds the ONBUILD triggers a stage runs: a base image's
// config is untrusted.
const maxTriggers = 1000

// parseTriggers reads ONBUILD trigger expressions as the instructions a
// stage runs first, as BuildKit does: each must be one instruction, and
// each is placed at the stage's FROM line for messages. Chains and
// MAINTAINER are refused, as Docker refuses them.
func (b *builder) parseTriggers(exprs []string, at []parser.Range) ([]instructions.Command, error) {
	if len(exprs) > maxTriggers {
		return nil, fmt.Errorf("the base has %d ONBUILD triggers, more than %d", len(exprs), maxTriggers)
	}
	out := make([]instructions.Command, 0, len(exprs))
	for _, e := range exprs {
		res, err := parser.Parse(strings.NewReader(e))
		if err == nil && len(res.AST.Children) != 1 {
			err = errors.New("a trigger must be one instruction")
		}
		if err != nil {
			return nil, fmt.Errorf("ONBUILD trigger %q: %w", clip(oneLine(e), 200), err)
		}
		node := res.AST.Children[0]
		if len(at) > 0 {
			node.StartLine, node.EndLine = at[0].Start.Line, at[len(at)-1].End.Line
		}
		cmd, err := instructions.ParseCommand(node)
		switch cmd.(type) {
		case *instructions.OnbuildCommand:
			err = errors.New("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
		case *instructions.MaintainerCommand:
			err = errors.New("MAINTAINER isn't allowed as an ONBUILD trigger")
		}
		if err != nil {
			return nil, fmt.Errorf("ONBUILD trigger %q: %w", clip(oneLine(e), 200), err)
		}
		out = append(out, cmd)
	}
	return out, nil
}

// declaredTriggers are the ONBUILD expressions stage j declares: a stage
// FROM it runs them.
func (b *builder) declaredTriggers(j int) []string {
	var out []string
	for _, cmd := range b.stages[j].Commands {
		if c, ok := cmd.(*instructions.OnbuildCommand); ok {
			out = append(out, c.Expression)
		}
	}
	return out
}

func line(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

// normalizePlatform writes a platform as BuildKit and Docker read it
// (containerd's platforms package: "x86_64" is amd64, "aarch64" arm64, a
// lone architecture this OS's), so that another spelling of this machine's
// platform is this machine's, and images and cache keys see one spelling.
func normalizePlatform(platform string) (string, error) {
	if platform == "" {
		return "", nil
	}
	p, err := platforms.Parse(platform)
	if err != nil {
		return "", fmt.Errorf("platform %q: %w", platform, err)
	}
	return platforms.Format(platforms.Normalize(p)), nil
}

// checkPlatform refuses a platform this machine cannot run without
// binfmt emulation.
func checkPlatform(platform string) error {
	if platform == "" {
		return nil
	}
	norm, err := normalizePlatform(platform)
	if err != nil {
		return err
	}
	p, err := v1.ParsePlatform(norm)
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
		return b.workdir(ctx, st)
	case *instructions.MaintainerCommand:
		st.author = c.Maintainer
		st.pending = append(st.pending, b.history("MAINTAINER "+c.Maintainer, true))
		return nil
	case *instructions.HealthCheckCommand:
		if err := b.metadata(st, c); err != nil {
			return err
		}
		d := commit.HealthStart(c)
		st.healthStart = &d
		return nil
	default:
		return b.metadata(st, c)
	}
}

// metadata applies an instruction that only changes the config, with
// the history entry BuildKit writes for it.
func (b *builder) metadata(st *stageState, c instructions.Command) error {
	// What CreatedBy reads of the config before the instruction, copied:
	// not the whole config (its labels) at every instruction.
	cur := &st.config.Config
	before := &v1.Config{Env: slices.Clone(cur.Env), Cmd: slices.Clone(cur.Cmd), Entrypoint: slices.Clone(cur.Entrypoint),
		Shell: slices.Clone(cur.Shell), WorkingDir: cur.WorkingDir}
	if err := st.stage.Apply(cur, c, st.argEnv()); err != nil {
		return err
	}
	text, err := st.stage.CreatedBy(before, c, st.argEnv())
	if err != nil {
		return err
	}
	st.pending = append(st.pending, b.history(text, true))
	return nil
}

// arg declares build arguments in the stage.
func (b *builder) arg(st *stageState, c *instructions.ArgCommand) error {
	x := st.expander()
	texts := make([]string, 0, len(c.Args))
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
		text := kv.Key
		if val != nil {
			text += "=" + *val
		}
		texts = append(texts, text)
	}
	// As BuildKit writes it: each argument with the value it took.
	st.pending = append(st.pending, b.history("ARG "+strings.Join(texts, " "), true))
	return nil
}
