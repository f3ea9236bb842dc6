package commit

import (
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// base is an image config with a value in every field a change can edit.
func base() *v1.Config {
	return &v1.Config{
		Cmd:          []string{"/bin/sh"},
		Entrypoint:   []string{"/init"},
		Env:          []string{"PATH=/usr/bin:/bin", "HOME=/root"},
		WorkingDir:   "/srv",
		User:         "root",
		Labels:       map[string]string{"old": "1"},
		ExposedPorts: map[string]struct{}{"22/tcp": {}},
		Volumes:      map[string]struct{}{"/data": {}},
		StopSignal:   "SIGTERM",
	}
}

func short(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func mustParse(t *testing.T, line string) Change {
	t.Helper()
	c, err := ParseChange(line)
	if err != nil {
		t.Fatalf("ParseChange(%q): %v", short(line), err)
	}
	return c
}

// TestApply applies one change to base() and compares the whole config.
func TestApply(t *testing.T) {
	tests := []struct {
		line string
		edit func(*v1.Config) // what the change does to base()
	}{
		// CMD and ENTRYPOINT, both forms.
		{`CMD ["nginx", "-g", "daemon off;"]`, func(c *v1.Config) { c.Cmd = []string{"nginx", "-g", "daemon off;"} }},
		{`cmd echo "$HOME"  x`, func(c *v1.Config) { c.Cmd = []string{"/bin/sh", "-c", `echo "$HOME"  x`} }},
		{`CMD []`, func(c *v1.Config) { c.Cmd = nil }},
		{`CMD [ "a" , "b c" ]`, func(c *v1.Config) { c.Cmd = []string{"a", "b c"} }},
		{`CMD ["a"`, func(c *v1.Config) { c.Cmd = []string{"/bin/sh", "-c", `["a"`} }}, // not JSON: shell form, as Docker
		{`ENTRYPOINT ["/app", "--flag"]`, func(c *v1.Config) { c.Entrypoint = []string{"/app", "--flag"}; c.Cmd = nil }},
		{`ENTRYPOINT exec /app`, func(c *v1.Config) { c.Entrypoint = []string{"/bin/sh", "-c", "exec /app"}; c.Cmd = nil }},
		{`ENTRYPOINT []`, func(c *v1.Config) { c.Entrypoint = nil; c.Cmd = nil }},
		// ENV: several pairs, legacy form, replacement, quotes, expansion from the config's Env.
		{`ENV A=1 B="two words"`, func(c *v1.Config) { c.Env = append(c.Env, "A=1", "B=two words") }},
		{`ENV A 1 2`, func(c *v1.Config) { c.Env = append(c.Env, "A=1 2") }},
		{`ENV HOME=/home/app`, func(c *v1.Config) { c.Env[1] = "HOME=/home/app" }},
		{`ENV PATH=/opt/bin:$PATH`, func(c *v1.Config) { c.Env[0] = "PATH=/opt/bin:/usr/bin:/bin" }},
		{`ENV HOME=/x OLD=$HOME`, func(c *v1.Config) { c.Env[1] = "HOME=/x"; c.Env = append(c.Env, "OLD=/root") }},
		{`ENV A='$HOME' B=\$HOME C=${NOPE:-dflt} D=$NOPE`, func(c *v1.Config) { c.Env = append(c.Env, "A=$HOME", "B=$HOME", "C=dflt", "D=") }},
		// WORKDIR: relative to the previous one, absolute kept, cleaned.
		{`WORKDIR app`, func(c *v1.Config) { c.WorkingDir = "/srv/app" }},
		{`WORKDIR ../etc/./x/`, func(c *v1.Config) { c.WorkingDir = "/etc/x" }},
		{`WORKDIR /a/../b//c`, func(c *v1.Config) { c.WorkingDir = "/b/c" }},
		{`WORKDIR $HOME/w`, func(c *v1.Config) { c.WorkingDir = "/root/w" }},
		// USER.
		{`USER app:app`, func(c *v1.Config) { c.User = "app:app" }},
		{`USER "1000"`, func(c *v1.Config) { c.User = "1000" }},
		// LABEL: several pairs, quotes, legacy form, replacement.
		{`LABEL a=b "c d"=e old=2`, func(c *v1.Config) { c.Labels = map[string]string{"a": "b", "c d": "e", "old": "2"} }},
		{`LABEL k v w`, func(c *v1.Config) { c.Labels["k"] = "v w" }},
		// EXPOSE: default tcp, protocols, ranges, duplicates.
		{`EXPOSE 80 8080/udp 9000-9002 53/UDP 22`, func(c *v1.Config) {
			for _, p := range []string{"80/tcp", "8080/udp", "9000/tcp", "9001/tcp", "9002/tcp", "53/udp"} {
				c.ExposedPorts[p] = struct{}{}
			}
		}},
		{`EXPOSE 1-65535/sctp`, func(c *v1.Config) {
			for p := 1; p <= 65535; p++ {
				c.ExposedPorts[strconv.Itoa(p)+"/sctp"] = struct{}{}
			}
		}},
		// VOLUME: both forms.
		{`VOLUME ["/a", "/b c"]`, func(c *v1.Config) { c.Volumes["/a"] = struct{}{}; c.Volumes["/b c"] = struct{}{} }},
		{`VOLUME /a /b`, func(c *v1.Config) { c.Volumes["/a"] = struct{}{}; c.Volumes["/b"] = struct{}{} }},
		// STOPSIGNAL: names with and without SIG, numbers, real-time signals.
		{`STOPSIGNAL SIGQUIT`, func(c *v1.Config) { c.StopSignal = "SIGQUIT" }},
		{`STOPSIGNAL kill`, func(c *v1.Config) { c.StopSignal = "kill" }},
		{`STOPSIGNAL 9`, func(c *v1.Config) { c.StopSignal = "9" }},
		{`STOPSIGNAL SIGRTMIN+3`, func(c *v1.Config) { c.StopSignal = "SIGRTMIN+3" }},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			c := mustParse(t, tt.line)
			if c.String() != tt.line {
				t.Errorf("String() = %q, want the line", c.String())
			}
			got, want := base(), base()
			tt.edit(want)
			if err := c.Apply(got); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Apply:\n got %+v\nwant %+v", got, want)
			}
			// A Change is not consumed: it applies again to another config alike.
			again := base()
			if err := c.Apply(again); err != nil || !reflect.DeepEqual(again, want) {
				t.Errorf("second Apply: err %v, got %+v", err, again)
			}
		})
	}
}

// TestApplyEmptyConfig: the nil maps and slices of a new config are made.
func TestApplyEmptyConfig(t *testing.T) {
	changes, err := ParseChanges([]string{
		`ENV A=1`, `LABEL l=v`, `EXPOSE 80`, `VOLUME /v`, `WORKDIR w`, `STOPSIGNAL 15`, `USER u`, `CMD run`,
	})
	if err != nil {
		t.Fatal(err)
	}
	var cfg v1.Config
	if err := ApplyChanges(&cfg, changes); err != nil {
		t.Fatal(err)
	}
	want := v1.Config{
		Env: []string{"A=1"}, Labels: map[string]string{"l": "v"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}}, Volumes: map[string]struct{}{"/v": {}},
		WorkingDir: "/w", StopSignal: "15", User: "u", Cmd: []string{"/bin/sh", "-c", "run"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v\nwant %+v", cfg, want)
	}
}

// TestShell: the shell form uses the config's SHELL when it has one.
func TestShell(t *testing.T) {
	cfg := &v1.Config{Shell: []string{"/bin/bash", "-eo", "pipefail", "-c"}}
	if err := mustParse(t, "CMD a | b").Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if want := []string{"/bin/bash", "-eo", "pipefail", "-c", "a | b"}; !reflect.DeepEqual(cfg.Cmd, want) {
		t.Errorf("Cmd = %q, want %q", cfg.Cmd, want)
	}
	if want := []string{"/bin/bash", "-eo", "pipefail", "-c"}; !reflect.DeepEqual(cfg.Shell, want) {
		t.Errorf("Shell changed to %q", cfg.Shell)
	}
}

// TestEntrypointKeepsEarlierCmd: as docker commit --change, buildah commit
// --change and a Dockerfile, ENTRYPOINT clears the inherited CMD but not one
// set by an earlier change.
func TestEntrypointKeepsEarlierCmd(t *testing.T) {
	tests := []struct {
		lines []string
		cmd   []string
		ep    []string
	}{
		{[]string{`ENTRYPOINT ["/e"]`}, nil, []string{"/e"}},
		{[]string{`CMD ["c"]`, `ENTRYPOINT ["/e"]`}, []string{"c"}, []string{"/e"}},
		{[]string{`ENTRYPOINT ["/e"]`, `CMD ["c"]`}, []string{"c"}, []string{"/e"}},
		{[]string{`ENV X=1`, `ENTRYPOINT ["/e"]`}, nil, []string{"/e"}},
	}
	for _, tt := range tests {
		changes, err := ParseChanges(tt.lines)
		if err != nil {
			t.Fatal(err)
		}
		cfg := base()
		if err := ApplyChanges(cfg, changes); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(cfg.Cmd, tt.cmd) || !reflect.DeepEqual(cfg.Entrypoint, tt.ep) {
			t.Errorf("%q: Cmd %q Entrypoint %q, want %q %q", tt.lines, cfg.Cmd, cfg.Entrypoint, tt.cmd, tt.ep)
		}
	}
}

// TestEnvSeenByLaterChanges: a change expands with the Env that earlier
// changes left.
func TestEnvSeenByLaterChanges(t *testing.T) {
	changes, err := ParseChanges([]string{`ENV APP=/opt/app P=8080`, `WORKDIR $APP`, `EXPOSE $P ${P}/udp`, `LABEL dir=$APP`})
	if err != nil {
		t.Fatal(err)
	}
	var cfg v1.Config
	if err := ApplyChanges(&cfg, changes); err != nil {
		t.Fatal(err)
	}
	if cfg.WorkingDir != "/opt/app" || cfg.Labels["dir"] != "/opt/app" {
		t.Errorf("WorkingDir %q, label %q", cfg.WorkingDir, cfg.Labels["dir"])
	}
	if want := map[string]struct{}{"8080/tcp": {}, "8080/udp": {}}; !reflect.DeepEqual(cfg.ExposedPorts, want) {
		t.Errorf("ExposedPorts %v", cfg.ExposedPorts)
	}
}

// TestApplyRefusedLeavesConfig: a value that is wrong only once expanded is
// refused by Apply, and the config is left as it was.
func TestApplyRefusedLeavesConfig(t *testing.T) {
	for _, line := range []string{`EXPOSE $PORT`, `STOPSIGNAL $SIG`, `ENV A=1 B=${UNSET:?unset}`, `VOLUME $EMPTY`} {
		c := mustParse(t, line) // the variables are unknown until Apply
		cfg := base()
		cfg.Env = append(cfg.Env, "PORT=99999", "SIG=NOPE", "EMPTY=")
		before := cfg.DeepCopy()
		err := c.Apply(cfg)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: Apply err %v, want an invalid argument", line, err)
		}
		if !reflect.DeepEqual(cfg, before) {
			t.Errorf("%q: refused Apply changed the config", line)
		}
		if err := ApplyChanges(cfg, []Change{mustParse(t, "ENV Z=1"), c}); err == nil || !reflect.DeepEqual(cfg, before) {
			t.Errorf("%q: ApplyChanges err %v; config changed %v", line, err, !reflect.DeepEqual(cfg, before))
		}
	}
}

func TestApplyDoesNotAlias(t *testing.T) {
	cfg := base()
	env := cfg.Env
	labels := cfg.Labels
	c := mustParse(t, `ENV HOME=/x`)
	if err := c.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if err := mustParse(t, `LABEL old=2`).Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if env[1] != "HOME=/root" || labels["old"] != "1" {
		t.Errorf("Apply wrote through to the old config's slice or map: %q %v", env, labels)
	}
}

func TestParseChangeRefuses(t *testing.T) {
	tests := []struct{ line, msg string }{
		{"", "empty"},
		{"   \t", "empty"},
		{"# escape=`", "comment"},
		{"RUN make", "not supported"},
		{"COPY a b", "not supported"},
		{"FROM scratch", "not supported"},
		{"ADD a b", "not supported"},
		{"SHELL [\"/bin/bash\"]", "not supported"},
		{"ONBUILD ONBUILD RUN x", "Chaining ONBUILD"},
		{"ONBUILD FROM x", "isn't allowed as an ONBUILD trigger"},
		{"HEALTHCHECK --interval=x CMD true", "interval"},
		{"FOO bar", "unknown instruction"},
		{"CMD", "no command"},
		{"ENTRYPOINT", "no command"},
		{"CMD --mount=type=cache x", "unknown flag"},
		{"ENV", "at least one"},
		{"ENV A", "two arguments"},
		{"ENV =1", "blank"},
		{`ENV A="x`, "matching"},
		{"LABEL", "at least one"},
		{"WORKDIR", "exactly one"},
		{"USER", "exactly one"},
		{"VOLUME", "at least one"},
		{`VOLUME [""]`, "empty"},
		{`VOLUME /a "/b c"`, "matching"},
		{"EXPOSE", "at least one"},
		{"EXPOSE 0", "1 to 65535"},
		{"EXPOSE 65536", "1 to 65535"},
		{"EXPOSE -1", "1 to 65535"},
		{"EXPOSE +80", "1 to 65535"},
		{"EXPOSE 80/icmp", "protocol"},
		{"EXPOSE 90-80", "range ends"},
		{"EXPOSE 8080:80", "host"},
		{"EXPOSE 127.0.0.1:8080:80", "host"},
		{"EXPOSE 1-65535 1-65535/udp", "more than 65535"},
		{"EXPOSE 1-40000 30000-60000", "more than 65535"},
		{"STOPSIGNAL", "exactly one"},
		{"STOPSIGNAL SIGNOPE", "not a Linux signal"},
		{"STOPSIGNAL 0", "not a Linux signal"},
		{"STOPSIGNAL -9", "not a Linux signal"},
		{"STOPSIGNAL 1000", "not a Linux signal"},
		{"ENV A=1\nRUN x", "line break"},
		{"ENV A=1\rB", "line break"},
		{"ENV A=\x00", "NUL"},
		{"LABEL a=\xff", "UTF-8"},
		{"LABEL a=" + strings.Repeat("x", MaxChangeLen), "longer"},
	}
	for _, tt := range tests {
		c, err := ParseChange(tt.line)
		if err == nil {
			t.Errorf("ParseChange(%q) = %v, want an error with %q", short(tt.line), c, tt.msg)
			continue
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("ParseChange(%q): %v, want %q in it", short(tt.line), err, tt.msg)
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseChange(%q): %v is not an invalid argument", short(tt.line), err)
		}
		var ce *ChangeError
		if !errors.As(err, &ce) || ce.Line != tt.line {
			t.Errorf("ParseChange(%q): %v is not a ChangeError for the line", short(tt.line), err)
		}
		if len(err.Error()) > 400 {
			t.Errorf("ParseChange(%q): error of %d bytes", short(tt.line), len(err.Error()))
		}
	}
}

func TestLongestLine(t *testing.T) {
	prefix := "LABEL a="
	line := prefix + strings.Repeat("x", MaxChangeLen-len(prefix))
	c := mustParse(t, line)
	var cfg v1.Config
	if err := c.Apply(&cfg); err != nil || len(cfg.Labels["a"]) != MaxChangeLen-len(prefix) {
		t.Errorf("Apply of the longest line: %v, label of %d bytes", err, len(cfg.Labels["a"]))
	}
}

func TestParseChanges(t *testing.T) {
	cs, err := ParseChanges([]string{"USER a", "RUN x", "CMD", "ENV A=1"})
	if cs != nil || err == nil {
		t.Fatalf("ParseChanges = %v, %v; want no changes and an error", cs, err)
	}
	for _, want := range []string{`"RUN x"`, `"CMD"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	cs, err = ParseChanges([]string{"USER a", "env A=1"})
	if err != nil || len(cs) != 2 || cs[1].Name() != "ENV" || cs[1].String() != "env A=1" {
		t.Errorf("ParseChanges = %v, %v", cs, err)
	}
}

func TestZeroChangeAndNilConfig(t *testing.T) {
	if err := (Change{}).Apply(&v1.Config{}); err == nil {
		t.Error("Apply of a zero Change succeeded")
	}
	if err := mustParse(t, "USER a").Apply(nil); err == nil {
		t.Error("Apply to a nil config succeeded")
	}
	if err := ApplyChanges(nil, nil); err == nil {
		t.Error("ApplyChanges to a nil config succeeded")
	}
}

// HEALTHCHECK and ONBUILD, which docker commit --change takes too.
func TestChangeHealthcheckOnbuild(t *testing.T) {
	cfg := v1.Config{OnBuild: []string{"RUN first"}}
	var changes []Change
	for _, l := range []string{"HEALTHCHECK --interval=5s --retries=2 CMD curl -f http://localhost/ || exit 1", "ONBUILD RUN echo $HOME", "onbuild COPY . /app"} {
		c, err := ParseChange(l)
		if err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		changes = append(changes, c)
	}
	if err := ApplyChanges(&cfg, changes); err != nil {
		t.Fatal(err)
	}
	h := cfg.Healthcheck
	if h == nil || h.Interval != 5*time.Second || h.Retries != 2 || !slices.Equal(h.Test, []string{"CMD-SHELL", "curl -f http://localhost/ || exit 1"}) {
		t.Errorf("health check %+v", h)
	}
	if want := []string{"RUN first", "RUN echo $HOME", "COPY . /app"}; !slices.Equal(cfg.OnBuild, want) {
		t.Errorf("OnBuild %q, want %q", cfg.OnBuild, want)
	}
	c, err := ParseChange("HEALTHCHECK NONE")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(&cfg); err != nil {
		t.Fatal(err)
	}
	if h := cfg.Healthcheck; h == nil || !slices.Equal(h.Test, []string{"NONE"}) {
		t.Errorf("HEALTHCHECK NONE gave %+v", h)
	}
}
