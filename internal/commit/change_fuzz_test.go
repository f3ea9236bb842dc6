package commit

import (
	"errors"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzParseChange: no line panics ParseChange or Apply; what parses applies
// or is refused with a ChangeError; and String() parses back to a change with
// the same effect.
func FuzzParseChange(f *testing.F) {
	for _, seed := range []string{
		`CMD ["nginx", "-g", "daemon off;"]`, `CMD echo "$HOME"`, `CMD []`, `ENTRYPOINT ["/init"]`,
		`ENTRYPOINT exec app`, `ENV A=1 B="two words" C=$PATH`, `ENV A 1`, `ENV P=${X:-d}`,
		`WORKDIR ../a/./b`, `WORKDIR $HOME`, `USER app:app`, `LABEL a=b "c d"=e`, `LABEL k v`,
		`EXPOSE 80 8080/udp 9000-9002/sctp`, `EXPOSE $P`, `VOLUME ["/a", "/b"]`, `VOLUME /a /b`,
		`STOPSIGNAL SIGTERM`, `STOPSIGNAL 9`, `STOPSIGNAL RTMIN+2`,
		// refused
		``, `# escape=x`, `RUN make`, `FROM scratch`, `FOO bar`, `CMD`, `ENV A`, `ENV A="x`,
		`EXPOSE 0`, `EXPOSE 1-65535 1-65535/udp`, `EXPOSE 1:2:3`, `STOPSIGNAL NOPE`, "ENV A=\x00",
		"ENV A=1\nRUN x", `CMD --flag x`, `VOLUME [""]`, `LABEL a=\`, `ENV ${A:?x}=1`, `\`,
	} {
		f.Add(seed)
	}
	env := []string{"PATH=/bin", "HOME=/root", "P=8080", "X=", "A=a"}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseChange(line)
		if err != nil {
			checkRefusal(t, line, err)
			return
		}
		if c.String() != line {
			t.Fatalf("String() = %q, want %q", c.String(), line)
		}
		again, err := ParseChange(c.String())
		if err != nil {
			t.Fatalf("String() %q does not parse again: %v", c.String(), err)
		}
		for _, start := range []v1.Config{{}, {Env: env, WorkingDir: "/w", Shell: []string{"/bin/bash", "-c"}}} {
			got, want := start.DeepCopy(), start.DeepCopy()
			err1 := c.Apply(got)
			err2 := again.Apply(want)
			if err1 != nil {
				checkRefusal(t, line, err1)
			}
			if (err1 == nil) != (err2 == nil) || !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: reparsed change differs: %v vs %v, %+v vs %+v", line, err1, err2, got, want)
			}
			if err1 != nil && !reflect.DeepEqual(got, &start) {
				t.Fatalf("%q: refused Apply changed the config", line)
			}
			if len(got.ExposedPorts) > len(start.ExposedPorts)+MaxExposedPorts {
				t.Fatalf("%q: %d ports exposed", line, len(got.ExposedPorts))
			}
		}
	})
}

func checkRefusal(t *testing.T, line string, err error) {
	t.Helper()
	var ce *ChangeError
	if !errors.As(err, &ce) || ce.Line != line || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("%q: error %v (%T) is not a ChangeError for the line", line, err, err)
	}
	if len(err.Error()) > 1024 {
		t.Fatalf("%q: error of %d bytes", line, len(err.Error()))
	}
}
