package commit

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// TestCreatedBy: the history entries BuildKit v0.34 writes for metadata
// instructions (read off its images), words expanded with the stage's
// build arguments and Env.
func TestCreatedBy(t *testing.T) {
	cfg := &v1.Config{Env: []string{"PATH=/bin", "VER=12"}, Shell: nil}
	args := []string{"V=12", "P=8080"}
	for _, tc := range []struct{ line, want string }{
		{`ENV VER=$V NAME="x y"`, `ENV VER=12 NAME=x y`},
		{`ENV X=${VER}`, `ENV X=12`},
		{`LABEL version=$V "other"="$VER"`, `LABEL version=12 other=12`},
		{`EXPOSE $P 9000-9001/udp`, `EXPOSE [8080/tcp 9000/udp 9001/udp]`},
		{`USER 1000:$V`, `USER 1000:12`},
		{`VOLUME /data/$V /b`, `VOLUME [/data/12 /b]`},
		{`VOLUME ["/j"]`, `VOLUME [/j]`},
		{`STOPSIGNAL SIG$V`, `STOPSIGNAL SIG12`},
		{`CMD echo $VER`, `CMD ["/bin/sh" "-c" "echo $VER"]`},
		{`CMD ["a", "$VER"]`, `CMD ["a" "$VER"]`},
		{`CMD []`, `CMD []`},
		{`ENTRYPOINT run it`, `ENTRYPOINT ["/bin/sh" "-c" "run it"]`},
		{`WORKDIR sub/$V`, `WORKDIR /sub/12`},
		{`SHELL ["/bin/bash", "-c"]`, `SHELL [/bin/bash -c]`},
		{`HEALTHCHECK --interval=5s CMD true`, `HEALTHCHECK {Test:[CMD-SHELL true] Interval:5s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}`},
		{`HEALTHCHECK NONE`, `HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}`},
		{`MAINTAINER someone <a@b>`, `MAINTAINER someone <a@b>`},
		{`ONBUILD RUN echo $V`, `ONBUILD RUN echo $V`},
	} {
		res, err := parser.Parse(strings.NewReader(tc.line))
		if err != nil {
			t.Fatal(err)
		}
		cmd, err := instructions.ParseCommand(res.AST.Children[0])
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		var s Stage
		before := cfg.DeepCopy()
		got, err := s.CreatedBy(cfg, cmd, args)
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.line, got, err, tc.want)
		}
		if !reflect.DeepEqual(before, cfg) {
			t.Errorf("%s: CreatedBy changed the config", tc.line)
		}
	}
	// With the image's SHELL.
	var s Stage
	res, _ := parser.Parse(strings.NewReader("CMD run"))
	cmd, _ := instructions.ParseCommand(res.AST.Children[0])
	if got, _ := s.CreatedBy(&v1.Config{Shell: []string{"/bin/bash", "-ec"}}, cmd, nil); got != `CMD ["/bin/bash" "-ec" "run"]` {
		t.Errorf("CMD with SHELL: %q", got)
	}
}

// TestWithEnv: an image's environment over the build arguments, in one
// pass, as setting its entries one by one gives it; linear in their
// number (an image with 80,000 entries took a build 90 s).
func TestWithEnv(t *testing.T) {
	args := []string{"A=arg", "B=arg", "A=second"}
	env := []string{"B=img", "C=img", "NOVALUE", "C=again"}
	want := slices.Clone(args)
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		want = setEnv(want, k, v)
	}
	if got := WithEnv(args, env); !slices.Equal(got, want) {
		t.Errorf("WithEnv = %q, want %q", got, want)
	}
	if args[1] != "B=arg" {
		t.Errorf("WithEnv changed its arguments: %q", args)
	}
	big := make([]string, 200_000)
	for i := range big {
		big[i] = fmt.Sprintf("V%d=%d", i, i)
	}
	if got := WithEnv(nil, big); len(got) != len(big) || got[123456] != "V123456=123456" {
		t.Errorf("WithEnv of %d entries: %d, %q", len(big), len(got), got[123456])
	}
}
