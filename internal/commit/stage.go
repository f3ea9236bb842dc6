package commit

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Stage applies the metadata instructions of one Dockerfile build stage
// to its image config, as BuildKit's dispatcher does: words are expanded
// with the stage's build arguments and the config's Env (Env wins over an
// argument of the same name), and an ENTRYPOINT keeps a CMD set earlier in
// the same stage but drops one inherited from the base. The zero Stage is
// ready for the first instruction after FROM of a Dockerfile whose escape
// character is the backslash; NewStage takes another.
type Stage struct {
	st applyState
}

// NewStage returns a Stage for a Dockerfile whose escape directive names
// escape (0: backslash).
func NewStage(escape rune) Stage {
	return Stage{st: applyState{escape: escape}}
}

// Apply edits cfg as cmd does. args are the stage's build arguments in
// scope (K=V). Besides what a --change line may say, it takes SHELL,
// kept where Docker keeps it. On error cfg is
// unchanged; the error says which instruction.
func (s *Stage) Apply(cfg *v1.Config, cmd instructions.Command, args []string) error {
	if cfg == nil {
		return errors.New("commit: Stage.Apply on a nil config")
	}
	work := cfg.DeepCopy()
	env := WithEnv(args, work.Env)
	var err error
	switch c := cmd.(type) {
	case *instructions.ShellCommand:
		work.Shell = slices.Clone(c.Shell)
	default:
		ch := Change{cmd: cmd, line: cmd.Name()}
		if err = ch.applyWith(work, &s.st, env); err != nil {
			return err
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", strings.ToUpper(cmd.Name()), err)
	}
	*cfg = *work
	return nil
}

func applyHealthcheck(cfg *v1.Config, c *instructions.HealthCheckCommand) error {
	h := c.Health
	if h == nil {
		return errors.New("no health check")
	}
	cfg.Healthcheck = &v1.HealthConfig{
		Test: slices.Clone(h.Test), Interval: h.Interval, Timeout: h.Timeout,
		StartPeriod: h.StartPeriod, Retries: h.Retries,
	}
	return nil
}

// CreatedBy is the history entry BuildKit writes for cmd, a metadata
// instruction of the stage, when cfg is the config before it and args the
// stage's build arguments in scope: the instruction name, then its words
// expanded as Apply expands them (ENV and LABEL as K=V, unquoted; EXPOSE
// as the list of PORT/PROTO it exposes; VOLUME and SHELL as Go prints a
// list; CMD and ENTRYPOINT as the quoted argument list they become, the
// shell form with its shell; WORKDIR as the absolute directory). ONBUILD,
// which BuildKit records in no history entry, is "ONBUILD EXPRESSION":
// a config change is committed with an entry. ARG and the instructions
// that make layers are the builder's. cfg is not changed.
func (s *Stage) CreatedBy(cfg *v1.Config, cmd instructions.Command, args []string) (text string, err error) {
	// What the text needs of the config, copied: the commands' and the
	// working directory (which CMD, ENTRYPOINT and WORKDIR work on) and
	// the environment, not the whole config (its labels) at every step.
	work := &v1.Config{Cmd: slices.Clone(cfg.Cmd), Entrypoint: slices.Clone(cfg.Entrypoint),
		Shell: slices.Clone(cfg.Shell), WorkingDir: cfg.WorkingDir}
	env := WithEnv(args, cfg.Env)
	x := newExpander(env, false, s.st.escape)
	name := strings.ToUpper(cmd.Name())
	switch c := cmd.(type) {
	case *instructions.EnvCommand:
		text, err = pairsText(name, c.Env, x)
	case *instructions.LabelCommand:
		text, err = pairsText(name, c.Labels, x)
	case *instructions.UserCommand:
		var u string
		u, err = x.word(c.User)
		text = name + " " + u
	case *instructions.StopSignalCommand:
		var sig string
		sig, err = x.word(c.Signal)
		text = name + " " + sig
	case *instructions.VolumeCommand:
		vols := make([]string, 0, len(c.Volumes))
		for _, r := range c.Volumes {
			var v string
			if v, err = x.word(r); err != nil {
				break
			}
			vols = append(vols, v)
		}
		text = fmt.Sprintf("%s %v", name, vols)
	case *instructions.ExposeCommand:
		var ports []string
		ports, err = exposedList(c.Ports, x)
		text = fmt.Sprintf("%s %v", name, ports)
	case *instructions.CmdCommand:
		err = applyCmd(work, c.ShellDependantCmdLine, false, &applyState{})
		text = fmt.Sprintf("%s %q", name, work.Cmd)
	case *instructions.EntrypointCommand:
		err = applyCmd(work, c.ShellDependantCmdLine, true, &applyState{})
		text = fmt.Sprintf("%s %q", name, work.Entrypoint)
	case *instructions.WorkdirCommand:
		err = applyWorkdir(work, c.Path, x)
		text = name + " " + work.WorkingDir
	case *instructions.HealthCheckCommand:
		if c.Health == nil {
			return "", errors.New("HEALTHCHECK: no health check")
		}
		text = fmt.Sprintf("%s %+v", name, *c.Health)
	case *instructions.ShellCommand:
		text = fmt.Sprintf("%s %v", name, c.Shell)
	case *instructions.MaintainerCommand:
		text = fmt.Sprintf("%s %v", name, c.Maintainer)
	case *instructions.OnbuildCommand:
		text = name + " " + c.Expression
	default:
		return "", fmt.Errorf("%s is not a metadata instruction", name)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return text, nil
}

// pairsText is ENV's or LABEL's history text: " K=V" for each pair,
// expanded, as BuildKit's KeyValuePair.String prints it.
func pairsText(name string, pairs instructions.KeyValuePairs, x expander) (string, error) {
	kvs, err := expandPairs(pairs, x)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(name)
	for _, kv := range kvs {
		b.WriteString(" " + kv[0] + "=" + kv[1])
	}
	return b.String(), nil
}

// WithEnv is args (K=V) with each of env's entries set over them, in
// order, as setEnv would set them one by one, in one pass: an image's
// environment may hold many thousands of entries.
func WithEnv(args, env []string) []string {
	out := slices.Clone(args)
	at := make(map[string]int, len(out)+len(env))
	for i, e := range out {
		k, _, _ := strings.Cut(e, "=")
		if _, ok := at[shell.NormalizeEnvKey(k)]; !ok {
			at[shell.NormalizeEnvKey(k)] = i
		}
	}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		if i, ok := at[shell.NormalizeEnvKey(k)]; ok {
			out[i] = k + "=" + v
			continue
		}
		at[shell.NormalizeEnvKey(k)] = len(out)
		out = append(out, k+"="+v)
	}
	return out
}
