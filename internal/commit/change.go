package commit

import (
	"bufio"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/command"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/sys/signal"
)

// A --change line is one Dockerfile instruction that edits the new image's
// config, as in docker commit --change and buildah commit --change:
//
//	CMD ["nginx", "-g", "daemon off;"]    exec (JSON) form, kept as given
//	CMD nginx -g 'daemon off;'            shell form: the config's Shell, or ["/bin/sh", "-c"], then the line
//	ENTRYPOINT ["/init"]                  same forms; clears an inherited CMD (below)
//	ENV A=1 B="two words"                 several pairs; legacy ENV A 1 sets one; replaces an existing A
//	WORKDIR sub                           relative to the WorkingDir before it ("/" if none); cleaned
//	USER app:app
//	LABEL a=b "c d"=e                     several pairs; legacy LABEL a b
//	EXPOSE 80 8080/udp 9000-9002/sctp     ExposedPorts "80/tcp" ...; ranges expand
//	VOLUME ["/a", "/b"] or VOLUME /a /b
//	STOPSIGNAL SIGTERM                    a name, with or without SIG, or a number, valid on Linux
//	HEALTHCHECK --interval=5s CMD true    Docker's Healthcheck (options as in a Dockerfile); NONE disables
//	ONBUILD RUN make                      appended to the config's OnBuild triggers, as written
//
// Instruction names are case-insensitive. Every other instruction (RUN, COPY,
// ADD, FROM, ARG, SHELL, MAINTAINER) is refused: the ones that run or copy
// need a build, and docker commit --change does not take the others.
//
// Quotes, escapes and $VARS: ENV, LABEL, WORKDIR, USER, VOLUME, EXPOSE and
// STOPSIGNAL words go through BuildKit's shell lexer as in a Dockerfile
// build and in docker commit --change (which expands from the container's
// env): quotes are removed and $VAR / ${VAR} / ${VAR:-default} expand from
// the config's Env as it stands when the change applies, so an ENV in an
// earlier change of the same list is seen, and an unset variable becomes
// empty. Taking them literally instead would keep the quotes too: BuildKit's
// parser leaves ENV A="x y" as the value `"x y"` until this expansion. CMD
// and ENTRYPOINT are never expanded: their $VARS are taken literally, for the
// shell (shell form) or nobody (exec form) at run time.
//
// ENTRYPOINT clears the CMD that the image already had unless a CMD came
// earlier in the same list of changes (ApplyChanges). Docker's commit
// --change (a fresh builder whose cmdSet starts false), buildah's commit
// --change (imagebuilder's CmdSet) and a Dockerfile (BuildKit's cmd.IsSet)
// all agree on this, so Strata does the same. A CMD after the ENTRYPOINT sets
// CMD whatever came before.

// MaxChangeLen is the longest --change line accepted, in bytes: the longest
// line BuildKit's parser reads (64 KiB less the byte for the line's end).
const MaxChangeLen = bufio.MaxScanTokenSize - 1

// MaxExposedPorts is the most port/protocol entries one EXPOSE may add once
// its ranges are expanded: "EXPOSE 1-65535/tcp 1-65535/udp" is refused
// rather than growing a config by megabytes.
const MaxExposedPorts = 65535

// supported lists, in BuildKit's lower-case spelling, the instructions a
// change may be.
var supported = []string{
	command.Cmd, command.Entrypoint, command.Env, command.Workdir, command.User,
	command.Label, command.Expose, command.Volume, command.StopSignal,
	command.Healthcheck, command.Onbuild,
}

// Change edits an image config: one --change line, parsed.
//
// The zero Change is not valid: Apply refuses it. A Change is immutable and
// may be applied any number of times, to any number of configs.
type Change struct {
	line string
	cmd  instructions.Command // one of the supported *instructions.XCommand
}

// String returns the line the Change was parsed from, unchanged.
func (c Change) String() string { return c.line }

// Name returns the instruction, upper-case: "CMD", "ENV", ...
func (c Change) Name() string {
	if c.cmd == nil {
		return ""
	}
	return strings.ToUpper(c.cmd.Name())
}

// ChangeError is the error for a --change line that is refused, by
// ParseChange or by Apply. errors.Is(err, errdefs.ErrInvalidArgument) holds
// for it.
type ChangeError struct {
	Line string // the line as given
	Err  error  // why it is refused
}

// Error quotes the start of the line and of the reason: either may hold a
// word of the line, and a line may be 64 KiB.
func (e *ChangeError) Error() string {
	return fmt.Sprintf("--change %q: %s", clip(e.Line, 80), clip(e.Err.Error(), 300))
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Unwrap returns the reason and errdefs.ErrInvalidArgument.
func (e *ChangeError) Unwrap() []error { return []error{e.Err, errdefs.ErrInvalidArgument} }

func refuse(line string, format string, args ...any) error {
	return &ChangeError{Line: line, Err: fmt.Errorf(format, args...)}
}

// ParseChange parses one --change line: exactly one instruction among those
// listed above, checked as far as it can be without the config it will apply
// to. Values that use $VARS (a port, a signal) are checked again by Apply,
// after expansion. Lines that are empty, a comment, longer than
// MaxChangeLen, not UTF-8, or that hold a NUL byte or a line break are
// refused.
func ParseChange(line string) (Change, error) {
	if err := checkLine(line); err != nil {
		return Change{}, &ChangeError{Line: line, Err: err}
	}
	res, err := parser.Parse(strings.NewReader(line))
	if err != nil {
		return Change{}, &ChangeError{Line: line, Err: err}
	}
	if len(res.AST.Children) != 1 { // cannot happen without a line break; never trust it
		return Change{}, refuse(line, "%d instructions: a change is exactly one", len(res.AST.Children))
	}
	node := res.AST.Children[0]
	name := strings.ToLower(node.Value)
	if !slices.Contains(supported, name) {
		what := "unknown instruction"
		if _, known := command.Commands[name]; known {
			what = "instruction not supported by --change"
		}
		return Change{}, refuse(line, "%s %s: a change is one of %s", what, strings.ToUpper(node.Value), supportedList())
	}
	cmd, err := instructions.ParseCommand(node)
	if err != nil {
		return Change{}, &ChangeError{Line: line, Err: err}
	}
	c := Change{line: line, cmd: cmd}
	// A dry run on an empty config catches every fault that does not depend
	// on the config's Env: bad quotes, bad ports, unknown signals.
	if err := c.apply(&v1.Config{}, &applyState{dryRun: true}); err != nil {
		return Change{}, err
	}
	return c, nil
}

func checkLine(line string) error {
	switch {
	case strings.TrimSpace(line) == "":
		return errors.New("empty: a change is one Dockerfile instruction")
	case len(line) > MaxChangeLen:
		return fmt.Errorf("%d bytes: longer than the %d a change may be", len(line), MaxChangeLen)
	case strings.IndexByte(line, 0) >= 0:
		return errors.New("holds a NUL byte")
	case strings.ContainsAny(line, "\r\n"):
		return errors.New("holds a line break: a change is one instruction on one line")
	case !utf8.ValidString(line):
		return errors.New("not valid UTF-8")
	case strings.HasPrefix(strings.TrimSpace(line), "#"):
		return errors.New("a comment: a change is one Dockerfile instruction")
	}
	return nil
}

func supportedList() string {
	names := make([]string, len(supported))
	for i, n := range supported {
		names[i] = strings.ToUpper(n)
	}
	return strings.Join(names, ", ")
}

// ParseChanges parses each line with ParseChange. It returns every refused
// line's error, joined, and no changes, if any is refused.
func ParseChanges(lines []string) ([]Change, error) {
	changes := make([]Change, 0, len(lines))
	var errs []error
	for _, l := range lines {
		c, err := ParseChange(l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		changes = append(changes, c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return changes, nil
}

// Apply edits cfg as the change alone would: an ENTRYPOINT clears cfg's
// CMD. To apply several changes, use ApplyChanges, which lets an earlier CMD
// survive a later ENTRYPOINT as Docker does; calling Apply in a loop would
// not. On error cfg is unchanged.
func (c Change) Apply(cfg *v1.Config) error {
	return c.apply(cfg, &applyState{})
}

// ApplyChanges applies changes to cfg in order, as docker commit does with
// its --change lines. On error cfg is unchanged.
func ApplyChanges(cfg *v1.Config, changes []Change) error {
	if cfg == nil {
		return errors.New("commit: ApplyChanges on a nil config")
	}
	work := cfg.DeepCopy()
	st := &applyState{}
	for _, c := range changes {
		if err := c.apply(work, st); err != nil {
			return err
		}
	}
	*cfg = *work
	return nil
}

// applyState is what one change tells the next within a list.
type applyState struct {
	cmdSet bool // a CMD came earlier: a later ENTRYPOINT keeps it
	dryRun bool // ParseChange's check: unset $VARS stay as written and values that use them are not judged
	escape rune // the Dockerfile's escape character; 0 is backslash (a --change line cannot hold an escape directive)
}

// apply expands and checks every word first and only then edits cfg, so
// that a refused change leaves cfg as it was.
func (c Change) apply(cfg *v1.Config, st *applyState) error {
	if cfg == nil {
		return errors.New("commit: Apply on a nil config")
	}
	return c.applyWith(cfg, st, cfg.Env)
}

// applyWith is apply with words expanded from env.
func (c Change) applyWith(cfg *v1.Config, st *applyState, env []string) error {
	if c.cmd == nil {
		return errors.New("commit: Apply of a zero Change (use ParseChange)")
	}
	x := newExpander(env, st.dryRun, st.escape)
	var err error
	switch cmd := c.cmd.(type) {
	case *instructions.CmdCommand:
		err = applyCmd(cfg, cmd.ShellDependantCmdLine, false, st)
	case *instructions.EntrypointCommand:
		err = applyCmd(cfg, cmd.ShellDependantCmdLine, true, st)
	case *instructions.EnvCommand:
		err = applyEnv(cfg, cmd.Env, x)
	case *instructions.LabelCommand:
		err = applyLabel(cfg, cmd.Labels, x)
	case *instructions.WorkdirCommand:
		err = applyWorkdir(cfg, cmd.Path, x)
	case *instructions.UserCommand:
		var user string
		if user, err = x.word(cmd.User); err == nil {
			cfg.User = user
		}
	case *instructions.VolumeCommand:
		err = applyVolume(cfg, cmd.Volumes, x)
	case *instructions.ExposeCommand:
		err = applyExpose(cfg, cmd.Ports, x)
	case *instructions.StopSignalCommand:
		err = applyStopSignal(cfg, cmd.Signal, x)
	case *instructions.HealthCheckCommand:
		err = applyHealthcheck(cfg, cmd)
	case *instructions.OnbuildCommand:
		// Kept as written: the trigger is expanded when a build FROM
		// the image runs it.
		cfg.OnBuild = append(slices.Clip(cfg.OnBuild), cmd.Expression)
	default:
		err = fmt.Errorf("instruction %s not supported", c.Name())
	}
	if err != nil {
		return &ChangeError{Line: c.line, Err: err}
	}
	return nil
}

// expander runs words through BuildKit's shell lexer with the config's Env,
// as a Dockerfile build does for the instructions that expand.
type expander struct {
	lex    *shell.Lex
	env    shell.EnvGetter
	dryRun bool
}

func newExpander(env []string, dryRun bool, escape rune) expander {
	if escape == 0 {
		escape = '\\'
	}
	lex := shell.NewLex(escape)
	lex.SkipUnsetEnv = dryRun
	return expander{lex: lex, env: shell.EnvsFromSlice(env), dryRun: dryRun}
}

func (x expander) word(w string) (string, error) {
	s, _, err := x.lex.ProcessWord(w, x.env)
	return s, err
}

func (x expander) words(w string) ([]string, error) {
	return x.lex.ProcessWords(w, x.env)
}

// unjudged reports whether a value is left for Apply to check: in
// ParseChange's dry run, one that uses a variable.
func (x expander) unjudged(raw string) bool {
	return x.dryRun && strings.ContainsRune(raw, '$')
}

func applyCmd(cfg *v1.Config, line instructions.ShellDependantCmdLine, entrypoint bool, st *applyState) error {
	args := slices.Clone(line.CmdLine)
	if len(line.Files) > 0 {
		return errors.New("heredocs are not supported")
	}
	if line.PrependShell {
		if len(args) == 0 {
			return errors.New("no command: give one, or [] to clear it")
		}
		// As BuildKit's withShell: the image's SHELL, else /bin/sh -c.
		shellArgs := slices.Clone(cfg.Shell)
		if len(shellArgs) == 0 {
			shellArgs = []string{"/bin/sh", "-c"}
		}
		args = append(shellArgs, strings.Join(args, " "))
	}
	if len(args) == 0 {
		args = nil
	}
	if !entrypoint {
		cfg.Cmd = args
		st.cmdSet = true
		return nil
	}
	cfg.Entrypoint = args
	if !st.cmdSet {
		cfg.Cmd = nil
	}
	return nil
}

func applyEnv(cfg *v1.Config, pairs instructions.KeyValuePairs, x expander) error {
	kvs, err := expandPairs(pairs, x)
	if err != nil {
		return err
	}
	for i, kv := range kvs {
		if strings.ContainsRune(kv[0], '=') && !x.unjudged(pairs[i].Key) {
			return fmt.Errorf("ENV name %q holds '='", kv[0])
		}
	}
	for _, kv := range kvs {
		cfg.Env = setEnv(cfg.Env, kv[0], kv[1])
	}
	return nil
}

// setEnv replaces name's entry in env, or appends one, as BuildKit's addEnv.
func setEnv(env []string, name, value string) []string {
	for i, e := range env {
		k, _, _ := strings.Cut(e, "=")
		if shell.EqualEnvKeys(k, name) {
			env = slices.Clone(env) // never write through to a caller's backing array
			env[i] = name + "=" + value
			return env
		}
	}
	return append(slices.Clip(env), name+"="+value)
}

func applyLabel(cfg *v1.Config, pairs instructions.KeyValuePairs, x expander) error {
	kvs, err := expandPairs(pairs, x)
	if err != nil {
		return err
	}
	labels := make(map[string]string, len(cfg.Labels)+len(kvs))
	for k, v := range cfg.Labels {
		labels[k] = v
	}
	for _, kv := range kvs {
		labels[kv[0]] = kv[1]
	}
	cfg.Labels = labels
	return nil
}

// expandPairs expands every name and value before any is used: in
// "ENV A=1 B=$A", B gets the A from before the line, as in a Dockerfile.
func expandPairs(pairs instructions.KeyValuePairs, x expander) ([][2]string, error) {
	kvs := make([][2]string, 0, len(pairs))
	for _, p := range pairs {
		k, err := x.word(p.Key)
		if err != nil {
			return nil, err
		}
		v, err := x.word(p.Value)
		if err != nil {
			return nil, err
		}
		if k == "" {
			return nil, fmt.Errorf("name %q is empty once expanded", p.Key)
		}
		kvs = append(kvs, [2]string{k, v})
	}
	return kvs, nil
}

// applyWorkdir follows BuildKit's NormalizeWorkdir on Linux, and cleans an
// absolute path too (BuildKit keeps "/a/../b" as written).
func applyWorkdir(cfg *v1.Config, raw string, x expander) error {
	dir, err := x.word(raw)
	if err != nil {
		return err
	}
	base := cfg.WorkingDir
	if !path.IsAbs(base) {
		base = path.Join("/", base)
	}
	if !path.IsAbs(dir) {
		dir = path.Join(base, dir)
	}
	cfg.WorkingDir = path.Clean(dir)
	return nil
}

func applyVolume(cfg *v1.Config, raw []string, x expander) error {
	vols := make([]string, 0, len(raw))
	for _, r := range raw {
		v, err := x.word(r)
		if err != nil {
			return err
		}
		if strings.TrimSpace(v) == "" && !x.unjudged(r) {
			return fmt.Errorf("VOLUME %q is empty", r)
		}
		vols = append(vols, v)
	}
	volumes := make(map[string]struct{}, len(cfg.Volumes)+len(vols))
	for v := range cfg.Volumes {
		volumes[v] = struct{}{}
	}
	for _, v := range vols {
		volumes[v] = struct{}{}
	}
	cfg.Volumes = volumes
	return nil
}

func applyStopSignal(cfg *v1.Config, raw string, x expander) error {
	sig, err := x.word(raw)
	if err != nil {
		return err
	}
	if !x.unjudged(raw) {
		s, err := signal.ParseSignal(sig)
		if err != nil || !signal.ValidSignalForPlatform(s) {
			return fmt.Errorf("STOPSIGNAL %q: not a Linux signal name (SIGTERM, TERM) or number", sig)
		}
	}
	cfg.StopSignal = sig
	return nil
}

// portRange is one EXPOSE word: ports first..last of proto.
type portRange struct {
	first, last int
	proto       string
}

func applyExpose(cfg *v1.Config, raw []string, x expander) error {
	ranges, total, err := exposedRanges(raw, x)
	if err != nil {
		return err
	}
	ports := make(map[string]struct{}, len(cfg.ExposedPorts)+total)
	for p := range cfg.ExposedPorts {
		ports[p] = struct{}{}
	}
	for _, pr := range ranges {
		for p := pr.first; p <= pr.last; p++ {
			ports[strconv.Itoa(p)+"/"+pr.proto] = struct{}{}
		}
	}
	cfg.ExposedPorts = ports
	return nil
}

// exposedRanges expands and parses EXPOSE's words; total is the ports
// they name.
func exposedRanges(raw []string, x expander) (ranges []portRange, total int, err error) {
	for _, r := range raw {
		if x.unjudged(r) {
			continue
		}
		words, err := x.words(r)
		if err != nil {
			return nil, 0, err
		}
		for _, w := range words {
			pr, err := parsePortRange(w)
			if err != nil {
				return nil, 0, err
			}
			total += pr.last - pr.first + 1
			if total > MaxExposedPorts {
				return nil, 0, fmt.Errorf("EXPOSE of more than %d ports", MaxExposedPorts)
			}
			ranges = append(ranges, pr)
		}
	}
	return ranges, total, nil
}

// exposedList is what EXPOSE's words expose, PORT/PROTO, in their order
// (a range as its ports), as BuildKit lists them in the history entry.
func exposedList(raw []string, x expander) ([]string, error) {
	ranges, total, err := exposedRanges(raw, x)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, total)
	for _, pr := range ranges {
		for p := pr.first; p <= pr.last; p++ {
			out = append(out, strconv.Itoa(p)+"/"+pr.proto)
		}
	}
	return out, nil
}

// parsePortRange reads PORT[-PORT][/tcp|udp|sctp]. The host forms
// (IP:HOST:PORT, HOST:PORT) that BuildKit accepts with a warning, and drops,
// are refused: publishing is decided when a container runs.
func parsePortRange(w string) (portRange, error) {
	ports, proto, _ := strings.Cut(w, "/")
	proto = strings.ToLower(proto)
	switch proto {
	case "":
		proto = "tcp"
	case "tcp", "udp", "sctp":
	default:
		return portRange{}, fmt.Errorf("EXPOSE %q: protocol %q is not tcp, udp or sctp", w, proto)
	}
	if strings.Contains(ports, ":") {
		return portRange{}, fmt.Errorf("EXPOSE %q: a host address or port belongs to run, not to the image", w)
	}
	first, last, isRange := strings.Cut(ports, "-")
	lo, err := parsePort(first)
	if err != nil {
		return portRange{}, fmt.Errorf("EXPOSE %q: %w", w, err)
	}
	hi := lo
	if isRange {
		if hi, err = parsePort(last); err != nil {
			return portRange{}, fmt.Errorf("EXPOSE %q: %w", w, err)
		}
		if hi < lo {
			return portRange{}, fmt.Errorf("EXPOSE %q: range ends before it starts", w)
		}
	}
	return portRange{first: lo, last: hi, proto: proto}, nil
}

// parsePort reads a decimal port 1..65535. Port 0, which BuildKit lets
// through, is refused: no runtime can publish it.
func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	p, _ := strconv.Atoi(s)
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return p, nil
}
