package daemon

import (
	"runtime"
	"testing"
)

func TestParsePlatform(t *testing.T) {
	host := "linux/" + runtime.GOARCH
	if runtime.GOARCH == "arm" || runtime.GOARCH == "arm64" {
		t.Skip("expectations written for a machine without CPU variants")
	}
	for in, want := range map[string]string{
		"linux":              host, // an OS alone: this machine's architecture
		"LINUX/AMD64":        "linux/amd64",
		"linux/x86_64":       "linux/amd64",
		"amd64":              "linux/amd64", // an architecture alone: linux
		"linux/aarch64":      "linux/arm64",
		"linux/arm64/v8":     "linux/arm64",
		"linux/arm":          "linux/arm/v7",
		"linux/armhf":        "linux/arm/v7",
		"linux/arm/v6":       "linux/arm/v6",
		"linux/amd64/v3":     "linux/amd64/v3",
		"linux/amd64:10.0.1": "linux/amd64:10.0.1",
	} {
		got, err := ParsePlatform(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if got.String() != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{"", "linux/arm/v7/extra", "linux//amd64", "lin ux"} {
		if p, err := ParsePlatform(bad); err == nil {
			t.Errorf("%q: got %s, want an error", bad, p)
		}
	}
}
