package remote

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePushReference(t *testing.T) {
	for _, ok := range []string{"localhost:5000/app", "localhost:5000/app:v1", "example.com/a/b:_x", "app:V1.0-rc_2", "app:" + strings.Repeat("a", 128)} {
		if _, err := ParsePushReference(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for ref, want := range map[string]string{
		"localhost:5000/app@sha256:" + strings.Repeat("0", 64):    "names a digest",
		"localhost:5000/app:v1@sha256:" + strings.Repeat("0", 64): "names a digest",
		"localhost:5000/app:-x":                                   `tag "-x" must start with`,
		"localhost:5000/app:.x":                                   `tag ".x" must start with`,
		"localhost:5000/app:" + strings.Repeat("a", 129):          "could not parse",
		"Not A/Reference!":                                        "could not parse",
	} {
		_, err := ParsePushReference(ref)
		if !errors.Is(err, ErrInvalidReference) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrInvalidReference saying %q", ref, err, want)
		}
	}
}
