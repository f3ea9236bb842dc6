package run

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseMount(t *testing.T) {
	cwd, _ := os.Getwd()
	for _, tc := range []struct {
		in   string
		want Mount
	}{
		{"type=bind,source=/a,target=/b", Mount{"bind", "/a", "/b", []string{"rbind", "rprivate"}}},
		{"type=bind,src=/a/,dst=/b/../c,readonly", Mount{"bind", "/a", "/c", []string{"rbind", "rprivate", "ro"}}},
		{"src=/a,destination=/b,ro=true,bind-propagation=rslave", Mount{"bind", "/a", "/b", []string{"rbind", "rslave", "ro"}}},
		{"TYPE=BIND,source=rel,target=/b,readonly=false", Mount{"bind", filepath.Join(cwd, "rel"), "/b", []string{"rbind", "rprivate"}}},
		{`"source=/a,b",target=/c`, Mount{"bind", "/a,b", "/c", []string{"rbind", "rprivate"}}},
		{"type=tmpfs,target=/t", Mount{"tmpfs", "tmpfs", "/t", []string{"nosuid", "nodev", "mode=1777"}}},
		{"type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=700", Mount{"tmpfs", "tmpfs", "/t", []string{"nosuid", "nodev", "mode=700", "size=67108864"}}},
		{"type=tmpfs,target=/t,tmpfs-size=1GiB,ro", Mount{"tmpfs", "tmpfs", "/t", []string{"nosuid", "nodev", "mode=1777", "size=1073741824", "ro"}}},
	} {
		got, err := ParseMount(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseMount(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if back, err := ParseMount(got.String()); err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("round trip of %q via %q: %+v, %v", tc.in, got.String(), back, err)
		}
	}
}

func TestParseMountErrors(t *testing.T) {
	for _, tc := range []struct{ in, says string }{
		{"", "empty"},
		{"type=bind,source=/a", "no target"},
		{"type=bind,target=/b", "needs a source"},
		{"type=volume,source=v,target=/b", `type "volume" is not supported`},
		{"type=bind,source=/a,target=b", "not an absolute path"},
		{"type=bind,source=/a,target=/", "cannot be the root"},
		{"type=bind,source=/a,target=/b,target=/c", "target given twice"},
		{"type=bind,source=/a,dst=/b,destination=/c", "target given twice"},
		{"type=bind,source=/a,target=/b,color=red", `unknown field "color=red"`},
		{"type=bind,source=/a,target=/b,readonly=maybe", "want true or false"},
		{"type=bind,source=/a,target=/b,bind-propagation=odd", "want one of"},
		{"type=bind,source=/a,target=/b,tmpfs-size=1m", "tmpfs-size is for type=tmpfs"},
		{"type=tmpfs,source=/a,target=/b", "source is not for type=tmpfs"},
		{"type=tmpfs,target=/t,tmpfs-size=lots", "want bytes"},
		{"type=tmpfs,target=/t,tmpfs-size=99999999999999999999", "too large"},
		{"type=tmpfs,target=/t,tmpfs-mode=999", "octal"},
		{"type=tmpfs,target=/t,tmpfs-size=", "empty value"},
		{"type=tmpfs,target", "target needs a value"},
		{"type=bind,source=/a,target=/b\ntype=tmpfs,target=/c", "one line"},
		{`type=bind,source="/a,target=/b`, "quote"},
	} {
		_, err := ParseMount(tc.in)
		if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ParseMount(%q): %v; want ErrInvalidOptions saying %q", tc.in, err, tc.says)
		}
	}
}

// FuzzParseMount: no input panics, every error is ErrInvalidOptions, and
// what parses round-trips through String.
func FuzzParseMount(f *testing.F) {
	for _, s := range []string{
		"type=bind,source=/a,target=/b,readonly",
		"src=/a,dst=/b,bind-propagation=rshared",
		`"source=/a,b",target=/c`,
		"type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1700",
		"type=tmpfs,destination=/t,ro=0",
		`type=bind,source=" /x""y",target=/z`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMount(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("ParseMount(%q): %v is not ErrInvalidOptions", s, err)
			}
			return
		}
		back, err := ParseMount(m.String())
		if err != nil || !reflect.DeepEqual(back, m) {
			t.Fatalf("ParseMount(%q) = %+v; String %q parses to %+v, %v", s, m, m.String(), back, err)
		}
	})
}
