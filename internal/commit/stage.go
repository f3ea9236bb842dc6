package commit

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
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
	env := slices.Clone(args)
	for _, e := range work.Env {
		k, v, _ := strings.Cut(e, "=")
		env = setEnv(env, k, v)
	}
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
