package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/stratafs/strata/internal/commit"
)

func parsed(t testing.TB, dockerfile string, args map[string]string) *builder {
	t.Helper()
	b := &builder{o: Options{Dockerfile: []byte(dockerfile), DockerfileName: "Dockerfile", BuildArgs: args, Log: func(string) {}}, used: map[string]bool{}}
	if err := b.parse(); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ dockerfile, want string }{
		{"FROM scratch\n\nBOGUS x\n", "Dockerfile:3: unknown instruction: BOGUS"},
		{"FROM scratch\nCOPY onlyone\n", "Dockerfile:2: COPY requires at least two arguments"},
		{"# nothing\n", "file with no instructions"},
		{"ARG A\n", "has no FROM"},
		{"RUN true\n", "Dockerfile:1:"},
	} {
		b := &builder{o: Options{Dockerfile: []byte(tc.dockerfile), DockerfileName: "Dockerfile"}, used: map[string]bool{}}
		err := b.parse()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrBuild) {
			t.Errorf("%q: got %v, want an ErrBuild saying %q", tc.dockerfile, err, tc.want)
		}
	}
}

func TestGlobalArgs(t *testing.T) {
	b := parsed(t, "ARG REG=docker.io\nARG IMG=$REG/busybox\nARG UNSET\nFROM $IMG:${TAG:-1}\n", map[string]string{"REG": "localhost:5000"})
	got, err := b.expandMeta(b.stages[0].BaseName, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got != "localhost:5000/busybox:1" {
		t.Errorf("FROM expands to %q", got)
	}
	if !b.used["REG"] {
		t.Error("REG not marked used")
	}
}

func TestNeededSkipsUnusedStages(t *testing.T) {
	b := parsed(t, `FROM scratch AS a
FROM scratch AS b
COPY --from=a / /
FROM scratch AS unused
FROM b AS c
RUN --mount=type=bind,from=a,target=/x true
FROM scratch AS d
`, nil)
	target, err := b.targetStage()
	if err != nil {
		t.Fatal(err)
	}
	if target != 4 {
		t.Fatalf("target %d, want the last stage", target)
	}
	b.o.Target = "C"
	target, err = b.targetStage()
	if err != nil || target != 3 {
		t.Fatalf("target C: %d, %v", target, err)
	}
	got, err := b.needed(target)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 3}; !equalInts(got, want) {
		t.Errorf("needed %v, want %v", got, want)
	}
	// A source that is no earlier stage is an error, as in BuildKit; a
	// name that is no stage's is an image.
	for _, c := range []struct{ df, want string }{
		{"FROM scratch AS a\nCOPY --from=a / /\n", "Dockerfile:2: circular dependency detected on stage: a"},
		{"FROM scratch\nCOPY --from=0 / /\n", "circular dependency detected on stage: 0"},
		{"FROM scratch\nCOPY --from=5 / /\n", "Dockerfile:2: invalid stage index 5"},
		{"FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\n", `Dockerfile:2: cannot copy from stage "b", it needs to be defined before current stage "a"`},
		{"FROM scratch\nCOPY --from=1 / /\nFROM scratch\n", `cannot copy from stage "1", it needs to be defined before current stage "0"`},
		{"FROM scratch AS a\nRUN --mount=from=B,target=/x true\nFROM scratch AS b\n", `Dockerfile:2: cannot mount from stage "B", it needs to be defined before current stage "a"`},
	} {
		b := parsed(t, c.df, nil)
		if _, err := b.needed(0); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.df, err, c.want)
		}
	}
	b.o.Target = "nope"
	if _, err := b.targetStage(); err == nil || !strings.Contains(err.Error(), `target stage "nope" not found`) {
		t.Errorf("unknown target: %v", err)
	} else if !strings.Contains(err.Error(), "stages: a, b, unused, c, d") {
		t.Errorf("unknown target: %v, want the stages named", err)
	}
	b = parsed(t, "FROM scratch\nFROM scratch\n", nil)
	b.o.Target = "x"
	if _, err := b.targetStage(); err == nil || !strings.Contains(err.Error(), "it names no stage") {
		t.Errorf("unknown target in a Dockerfile naming none: %v", err)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func runCommand(t *testing.T, line string) *instructions.RunCommand {
	t.Helper()
	b := parsed(t, "FROM scratch\n"+line+"\n", nil)
	return b.stages[0].Commands[0].(*instructions.RunCommand)
}

func TestRunArgs(t *testing.T) {
	st := &stageState{}
	for _, tc := range []struct {
		line, want, script string
		shell              []string
	}{
		{line: "RUN echo hi there", want: "/bin/sh|-c|echo hi there"},
		{line: `RUN ["echo", "hi"]`, want: "echo|hi"},
		{line: "RUN echo hi", shell: []string{"/bin/bash", "-o", "pipefail", "-c"}, want: "/bin/bash|-o|pipefail|-c|echo hi"},
		{line: "RUN <<EOF\necho a\necho b\nEOF", want: "/bin/sh|-c|echo a\necho b\n"},
		{line: "RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF", want: "/bin/sh|-c|/dev/pipes/EOF", script: "#!/usr/bin/env python3\nprint(1)\n"},
		{line: "RUN cat <<EOF > /f\nhello\nEOF", want: "/bin/sh|-c|cat <<EOF > /f\nhello\nEOF"},
	} {
		st.config.Config.Shell = tc.shell
		args, script, err := runArgs(st, runCommand(t, tc.line))
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if got := strings.Join(args, "|"); got != tc.want || script != tc.script {
			t.Errorf("%q: args %q script %q, want %q %q", tc.line, got, script, tc.want, tc.script)
		}
	}
}

func TestRunCommandString(t *testing.T) {
	v1s, v2 := "1", "two"
	got := runCommandString([]string{"/bin/sh", "-c", "make"}, []instructions.KeyValuePairOptional{
		{Key: "A", Value: &v1s}, {Key: "B"}, {Key: "A", Value: &v2},
	}, nil)
	if want := "|2 A=two B= /bin/sh -c make"; got != want {
		t.Errorf("got %q, want %q (BuildKit's form)", got, want)
	}
	// The value the command gets: an ENV of the same name wins.
	got = runCommandString([]string{"true"}, []instructions.KeyValuePairOptional{{Key: "A", Value: &v1s}, {Key: "C", Value: &v2}}, []string{"PATH=/bin", "A=env"})
	if want := "|2 A=env C=two true"; got != want {
		t.Errorf("with ENV: got %q, want %q", got, want)
	}
	if got := runCommandString([]string{"true"}, nil, nil); got != "true" {
		t.Errorf("no args: %q", got)
	}
}

func TestInImage(t *testing.T) {
	for _, tc := range []struct{ wd, p, want string }{
		{"", "app", "/app"},
		{"/src", "out/", "/src/out/"},
		{"/src", ".", "/src/"},
		{"/src", "/abs/../x", "/x"},
		{"/", "../../etc", "/etc"},
		{"/w", "./", "/w/"},
	} {
		if got := inImage(tc.wd, tc.p); got != tc.want {
			t.Errorf("inImage(%q, %q) = %q, want %q", tc.wd, tc.p, got, tc.want)
		}
	}
}

func TestCacheTrimDropsLeastRecentlyUsed(t *testing.T) {
	now := time.Now()
	entries := map[string]cacheEntry{}
	for i := range 10 {
		entries[string(rune('a'+i))] = cacheEntry{Image: "x", Used: now.Add(time.Duration(i) * time.Second)}
	}
	trim(entries, 4)
	if len(entries) != 4 {
		t.Fatalf("%d entries left", len(entries))
	}
	for _, k := range []string{"g", "h", "i", "j"} {
		if _, ok := entries[k]; !ok {
			t.Errorf("recent entry %s dropped", k)
		}
	}
}

// TestCachePutIsSaved: an entry is in the file as soon as it is put, so
// a build killed before its end keeps the steps it finished.
func TestCachePutIsSaved(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "build")
	c, err := openCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.put("k1", "r/a@sha256:1")
	again, err := openCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ref, ok := again.get("k1"); !ok || ref != "r/a@sha256:1" {
		t.Errorf("an entry put and never saved by the build's end: %q %v", ref, ok)
	}
}

func TestCacheSurvivesAndMerges(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "build")
	c1, err := openCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := openCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	c1.put("k1", "r/a@sha256:1")
	c2.put("k2", "r/a@sha256:2")
	if err := c1.save(); err != nil {
		t.Fatal(err)
	}
	if err := c2.save(); err != nil {
		t.Fatal(err)
	}
	c3, err := openCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k1", "k2"} {
		if _, ok := c3.get(k); !ok {
			t.Errorf("%s lost: builds at once must merge their entries", k)
		}
	}
	// Two cache mount directories, one held by a running build.
	mounts := filepath.Join(dir, cacheMountsDir)
	held, free := filepath.Join(mounts, "held"), filepath.Join(mounts, "free")
	for _, d := range []string{held, free} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	release, err := holdCacheMount(held)
	if err != nil {
		t.Fatal(err)
	}
	n, busy, err := PruneCache(root)
	if err != nil || n != 2 || busy != 1 {
		t.Fatalf("prune: %d entries, %d busy, %v", n, busy, err)
	}
	c4, err := openCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(c4.entries) != 0 {
		t.Errorf("%d entries after prune", len(c4.entries))
	}
	if _, err := os.Stat(filepath.Join(held, "sub")); err != nil {
		t.Errorf("prune removed a cache mount a running build holds: %v", err)
	}
	if _, err := os.Stat(free); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("prune left a cache mount nobody holds: %v", err)
	}
	release()
	if _, busy, err := PruneCache(root); err != nil || busy != 0 {
		t.Fatalf("prune once released: %d busy, %v", busy, err)
	}
	if _, err := os.Stat(held); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("prune left a released cache mount: %v", err)
	}
}

func TestStageConfigFromInstructions(t *testing.T) {
	b := parsed(t, `FROM scratch
ARG V=1.2
ENV PATH=/usr/bin APP_VERSION=$V
CMD ["serve"]
ENTRYPOINT ["/app"]
HEALTHCHECK --interval=5s CMD ["/app", "health"]
SHELL ["/bin/bash", "-c"]
ONBUILD RUN echo child
STOPSIGNAL SIGINT
EXPOSE 80/tcp 53/udp
VOLUME /data
LABEL version=$APP_VERSION
`, map[string]string{"V": "2.0"})
	st := &stageState{}
	for _, cmd := range b.stages[0].Commands {
		if err := b.dispatch(t.Context(), st, cmd); err != nil {
			t.Fatalf("%s: %v", cmd.Name(), err)
		}
	}
	c := st.config.Config
	check := func(what string, got, want any) {
		t.Helper()
		if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
			t.Errorf("%s: %s, want %s", what, g, w)
		}
	}
	check("Env", c.Env, []string{"PATH=/usr/bin", "APP_VERSION=2.0"})
	check("Cmd", c.Cmd, []string{"serve"})
	check("Entrypoint", c.Entrypoint, []string{"/app"})
	check("Shell", c.Shell, []string{"/bin/bash", "-c"})
	check("OnBuild", c.OnBuild, []string{"RUN echo child"})
	check("StopSignal", c.StopSignal, "SIGINT")
	check("Labels", c.Labels, map[string]string{"version": "2.0"})
	if c.Healthcheck == nil || c.Healthcheck.Interval != 5*time.Second || strings.Join(c.Healthcheck.Test, " ") != "CMD /app health" {
		t.Errorf("Healthcheck %+v", c.Healthcheck)
	}
	if _, ok := c.ExposedPorts["53/udp"]; !ok || len(c.ExposedPorts) != 2 {
		t.Errorf("ExposedPorts %v", c.ExposedPorts)
	}
	if _, ok := c.Volumes["/data"]; !ok {
		t.Errorf("Volumes %v", c.Volumes)
	}
	for _, h := range st.pending {
		if !h.EmptyLayer {
			t.Errorf("metadata entry %q has a layer", h.CreatedBy)
		}
	}
	if n := len(st.pending); n != 11 {
		t.Errorf("%d history entries, want one per instruction (11)", n)
	}
}

func TestNeededFollowsStageTriggers(t *testing.T) {
	b := parsed(t, `FROM scratch AS src
FROM scratch AS parent
ONBUILD COPY --from=src / /
ONBUILD RUN true
FROM scratch AS unused
FROM parent
COPY x /x
`, nil)
	got, err := b.needed(3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 3}; !equalInts(got, want) {
		t.Errorf("needed %v, want %v: the trigger's COPY --from=src makes src needed", got, want)
	}
	trig := b.triggers[3]
	if len(trig) != 2 || !strings.EqualFold(trig[0].Name(), "copy") || !strings.EqualFold(trig[1].Name(), "run") {
		t.Fatalf("triggers of the last stage: %v", trig)
	}
	if l := line(trig[1].Location()); l != 6 {
		t.Errorf("a trigger is placed at line %d, want its stage's FROM (6)", l)
	}
	if len(b.triggers[1]) != 0 {
		t.Errorf("parent (FROM scratch) runs triggers %v", b.triggers[1])
	}
}

func TestParseTriggers(t *testing.T) {
	b := parsed(t, "FROM scratch\n", nil)
	at := b.stages[0].Location
	cmds, err := b.parseTriggers([]string{"RUN echo hi > /x", "COPY a b", `ENV K=V`, "RUN <<EOT\necho heredoc\nEOT"}, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 4 {
		t.Fatalf("%d commands", len(cmds))
	}
	if run := cmds[3].(*instructions.RunCommand); len(run.Files) != 1 || !strings.Contains(run.Files[0].Data, "echo heredoc") {
		t.Errorf("heredoc trigger: %+v", run)
	}
	for _, bad := range []struct{ expr, want string }{
		{"FROM busybox", "FROM"},
		{"ONBUILD RUN true", "ONBUILD ONBUILD"},
		{"RUN a\nRUN b", "one instruction"},
		{"BOGUS x", "unknown instruction"},
		{"", "no instructions"},
		{"MAINTAINER me", "MAINTAINER"},
		{"COPY onlyone", "at least two arguments"},
	} {
		_, err := b.parseTriggers([]string{"RUN true", bad.expr}, at)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("trigger %q: %v, want an error saying %q", bad.expr, err, bad.want)
		}
	}
	many := make([]string, maxTriggers+1)
	for i := range many {
		many[i] = "RUN true"
	}
	if _, err := b.parseTriggers(many, at); err == nil || !strings.Contains(err.Error(), "ONBUILD triggers") {
		t.Errorf("%d triggers: %v", len(many), err)
	}
}

// FuzzParseTriggers feeds ONBUILD triggers as a base image's config may
// hold them (untrusted): parseTriggers must return an error or one
// command per trigger, placed at the FROM line, and never panic.
func FuzzParseTriggers(f *testing.F) {
	for _, s := range []string{"RUN echo hi", "COPY a b", "ONBUILD RUN x", "FROM x", "RUN a\nRUN b", "RUN <<EOT\nx\nEOT", "", "\\\n", "ENV A=${B:-c}", "ADD --chmod=755 http://x/y /z"} {
		f.Add(s)
	}
	b := parsed(f, "FROM scratch\n\nFROM scratch\n", nil)
	at := b.stages[1].Location
	f.Fuzz(func(t *testing.T, trigger string) {
		cmds, err := b.parseTriggers([]string{trigger}, at)
		if err != nil {
			return
		}
		if len(cmds) != 1 {
			t.Fatalf("%q gave %d commands", trigger, len(cmds))
		}
		if l := line(cmds[0].Location()); l != 3 {
			t.Fatalf("%q placed at line %d, want the FROM's 3", trigger, l)
		}
	})
}

// TestEscapeDirective: the Dockerfile's escape directive is the escape
// character of every expansion, as in BuildKit: a backtick escapes, a
// backslash is a plain character.
func TestEscapeDirective(t *testing.T) {
	b := parsed(t, "# escape=`\nFROM scratch\nARG DIR=c:\\app\nENV A=\"x`\"y\" B=a` b C=c:\\win\nLABEL dir=$DIR\nWORKDIR $DIR\n", nil)
	st := &stageState{escape: b.escape, stage: commit.NewStage(b.escape)}
	for _, cmd := range b.stages[0].Commands {
		if _, ok := cmd.(*instructions.WorkdirCommand); ok {
			// Its config change only: making the directory takes a mount.
			if err := st.stage.Apply(&st.config.Config, cmd, st.argEnv()); err != nil {
				t.Fatalf("%s: %v", cmd.Name(), err)
			}
			continue
		}
		if err := b.dispatch(t.Context(), st, cmd); err != nil {
			t.Fatalf("%s: %v", cmd.Name(), err)
		}
	}
	c := st.config.Config
	if c.WorkingDir != `/c:\app` {
		t.Errorf("WorkingDir %q, want /c:\\app", c.WorkingDir)
	}
	if want := []string{`A=x"y`, "B=a b", `C=c:\win`}; !slices.Equal(c.Env, want) {
		t.Errorf("Env %q, want %q", c.Env, want)
	}
	if c.Labels["dir"] != `c:\app` {
		t.Errorf("label dir = %q, want c:\\app", c.Labels["dir"])
	}
}

// TestChownIDs: --chown takes a name's primary group from /etc/passwd, but
// a numeric uid alone gets the same number as its gid.
func TestChownIDs(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nusr:x:3000:4000::/home/usr:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\ngrp:x:4000:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for spec, want := range map[string][2]uint32{"usr": {3000, 4000}, "3000": {3000, 3000}, "3000:grp": {3000, 4000}, "usr:0": {3000, 0}, "42:43": {42, 43}} {
		uid, gid, err := chownIDs(root, spec)
		if err != nil || [2]uint32{uid, gid} != want {
			t.Errorf("--chown=%s: %d:%d, %v; want %d:%d", spec, uid, gid, err, want[0], want[1])
		}
	}
}

// TestStartIntervalKept: HEALTHCHECK --start-interval, which the config
// model cannot hold, is kept by the stage for its commits (and in their
// cache keys); HEALTHCHECK NONE and one without it clear it.
func TestStartIntervalKept(t *testing.T) {
	b := parsed(t, "FROM scratch\nHEALTHCHECK --interval=5s --start-interval=1s CMD true\n", nil)
	st := &stageState{}
	for _, cmd := range b.stages[0].Commands {
		if err := b.dispatch(t.Context(), st, cmd); err != nil {
			t.Fatal(err)
		}
	}
	if h := st.config.Config.Healthcheck; h == nil || h.Interval != 5*time.Second {
		t.Errorf("Healthcheck %+v, want the check with its interval", h)
	}
	if st.healthStart == nil || *st.healthStart != time.Second {
		t.Fatalf("start interval %v, want 1s", st.healthStart)
	}
	b.cache = &cache{entries: map[string]cacheEntry{}, added: map[string]cacheEntry{}}
	key := b.cacheKey(st, "x")
	other := 2 * time.Second
	st.healthStart = &other
	if b.cacheKey(st, "x") == key {
		t.Error("the start interval is not in the cache key")
	}
	for _, line := range []string{"HEALTHCHECK NONE", "HEALTHCHECK --interval=5s CMD true"} {
		b2 := parsed(t, "FROM scratch\n"+line+"\n", nil)
		if err := b.dispatch(t.Context(), st, b2.stages[0].Commands[0]); err != nil {
			t.Fatal(err)
		}
		if st.healthStart == nil || *st.healthStart != 0 {
			t.Errorf("after %s: start interval %v, want 0", line, st.healthStart)
		}
	}
}

// A SOURCE_DATE_EPOCH an image config cannot carry is refused.
func TestSourceDateEpochBounds(t *testing.T) {
	for v, ok := range map[string]bool{"0": true, "253402300799": true, "253402300800": false, "99999999999999": false, "-5": false, "x": false} {
		b := parsed(t, "FROM scratch\n", map[string]string{"SOURCE_DATE_EPOCH": v})
		err := b.setTime()
		if ok != (err == nil) {
			t.Errorf("SOURCE_DATE_EPOCH=%s: %v", v, err)
		}
		if v == "99999999999999" && (err == nil || !strings.Contains(err.Error(), "year 9999")) {
			t.Errorf("SOURCE_DATE_EPOCH=%s: %v, want the bound said", v, err)
		}
	}
}

// TestSourceDateEpochSources: the build argument, else a global ARG's
// default, as BuildKit reads them; empty or "context" is none.
func TestSourceDateEpochSources(t *testing.T) {
	for _, c := range []struct {
		dockerfile string
		args       map[string]string
		want       int64 // -1: none
	}{
		{"FROM scratch\n", map[string]string{"SOURCE_DATE_EPOCH": "7"}, 7},
		{"ARG SOURCE_DATE_EPOCH=1000\nFROM scratch\n", nil, 1000},
		{"ARG SOURCE_DATE_EPOCH=1000\nFROM scratch\n", map[string]string{"SOURCE_DATE_EPOCH": "7"}, 7},
		{"ARG BASE=5\nARG SOURCE_DATE_EPOCH=${BASE}00\nFROM scratch\n", nil, 500},
		{"FROM scratch\nARG SOURCE_DATE_EPOCH=1000\n", nil, -1}, // a stage's own default: BuildKit ignores it too
		{"ARG SOURCE_DATE_EPOCH\nFROM scratch\n", nil, -1},
		{"FROM scratch\n", map[string]string{"SOURCE_DATE_EPOCH": ""}, -1},
		{"FROM scratch\n", map[string]string{"SOURCE_DATE_EPOCH": "context"}, -1},
	} {
		b := parsed(t, c.dockerfile, c.args)
		if err := b.setTime(); err != nil {
			t.Errorf("%q %v: %v", c.dockerfile, c.args, err)
			continue
		}
		got := int64(-1)
		if b.o.SourceDateEpoch != nil {
			got = *b.o.SourceDateEpoch
		}
		if got != c.want {
			t.Errorf("%q %v: epoch %d, want %d", c.dockerfile, c.args, got, c.want)
		}
	}
	b := parsed(t, "ARG SOURCE_DATE_EPOCH=soon\nFROM scratch\n", nil)
	if err := b.setTime(); err == nil || !strings.Contains(err.Error(), "global ARG SOURCE_DATE_EPOCH") {
		t.Errorf("a global default that is no number: %v", err)
	}
}

// TestMountKeys: a RUN's cache key changes with everything of its mounts
// that the step sees (a secret's place, variable, mode and owner; a cache
// mount's ro, mode and owner), never with a secret's value.
func TestMountKeys(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(secret, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &builder{o: Options{Secrets: map[string]Secret{"tok": {File: secret}}}, root: t.TempDir()}
	key := func(line string) string {
		t.Helper()
		st, c := &stageState{}, runCommand(t, line)
		if err := c.Expand(st.expander()); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		p, err := b.planMounts(context.Background(), st, c)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		return strings.Join(p.key, "\n")
	}
	lines := []string{
		"RUN --mount=type=secret,id=tok true",
		"RUN --mount=type=secret,id=tok,env=TOK true",
		"RUN --mount=type=secret,id=tok,env=OTHER true",
		"RUN --mount=type=secret,id=tok,env=TOK,target=/run/secrets/tok true",
		"RUN --mount=type=secret,id=tok,target=/s true",
		"RUN --mount=type=secret,id=tok,mode=0444 true",
		"RUN --mount=type=secret,id=tok,uid=1000 true",
		"RUN --mount=type=secret,id=tok,gid=1000 true",
		"RUN --mount=type=cache,target=/c true",
		"RUN --mount=type=cache,target=/c,ro true",
		"RUN --mount=type=cache,target=/c,mode=0700 true",
		"RUN --mount=type=cache,target=/c,uid=1000 true",
		"RUN --mount=type=cache,target=/c,gid=1000 true",
	}
	seen := map[string]string{}
	for _, l := range lines {
		k := key(l)
		if other, ok := seen[k]; ok {
			t.Errorf("%q and %q have one key:\n%s", l, other, k)
		}
		seen[k] = l
		if strings.Contains(k, "one") {
			t.Errorf("%q: the key holds the secret's value: %s", l, k)
		}
	}
	// The default target named or not: one key. A new value: one key.
	if a, b := key("RUN --mount=type=secret,id=tok true"), key("RUN --mount=type=secret,id=tok,target=/run/secrets/tok true"); a != b {
		t.Errorf("the default target written out changed the key: %q vs %q", a, b)
	}
	before := key(lines[1])
	if err := os.WriteFile(secret, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if after := key(lines[1]); after != before {
		t.Errorf("a new secret value changed the key: %q vs %q", before, after)
	}
}

// TestPlatformSpellings: every spelling of this machine's platform that
// BuildKit and Docker accept is this machine's.
func TestPlatformSpellings(t *testing.T) {
	host := "linux/" + runtime.GOARCH
	spellings := []string{host, runtime.GOARCH}
	switch runtime.GOARCH {
	case "amd64":
		spellings = append(spellings, "linux/x86_64", "x86_64", "linux/x86-64", "Linux/AMD64")
	case "arm64":
		spellings = append(spellings, "linux/aarch64", "aarch64", "linux/arm64/v8")
	}
	for _, s := range spellings {
		if err := checkPlatform(s); err != nil {
			t.Errorf("--platform %s refused: %v", s, err)
		}
		if got, err := normalizePlatform(s); err != nil || got != host {
			t.Errorf("--platform %s reads as %q (%v), want %s", s, got, err, host)
		}
	}
	if err := checkPlatform("windows/amd64"); err == nil || !strings.Contains(err.Error(), "only linux") {
		t.Errorf("windows/amd64: %v, want a refusal", err)
	}
	if _, err := normalizePlatform("linux/amd64/v2/extra"); err == nil {
		t.Errorf("a malformed platform was accepted")
	}
}

// TestStepErrorOfChange: a config instruction the commit package refuses
// is reported in the Dockerfile's words, not as a --change line.
func TestStepErrorOfChange(t *testing.T) {
	_, err := commit.ParseChange("EXPOSE abc")
	if err == nil {
		t.Fatal("EXPOSE abc was accepted")
	}
	msg := (&StepError{File: "Dockerfile", Line: 3, Step: "EXPOSE abc", Err: fmt.Errorf("stage: %w", err)}).Error()
	if strings.Contains(msg, "--change") || !strings.HasPrefix(msg, "Dockerfile:3: EXPOSE abc: ") {
		t.Errorf("message %q, want the Dockerfile's line and no --change", msg)
	}
}
