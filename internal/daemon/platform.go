package daemon

import (
	"fmt"
	"strings"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ParsePlatform reads a platform as containerd, docker and BuildKit read
// one (containerd's platforms.Parse): os[/arch[/variant]] or an
// architecture alone, in any case and any of their spellings ("x86_64",
// "aarch64", "armhf"), an OS alone meaning this machine's architecture;
// and go-containerregistry's ":OS.VERSION" suffix. The result is spelled
// as containerd spells it: arm64/v8 is arm64, arm is arm/v7.
func ParsePlatform(s string) (v1.Platform, error) {
	spec, osVersion := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !strings.Contains(s[i:], "/") {
		spec, osVersion = s[:i], s[i+1:]
	}
	p, err := platforms.Parse(spec)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("platform %q: want os[/arch[/variant]]: %w", s, err)
	}
	p = platforms.Normalize(p)
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, OSVersion: osVersion}, nil
}
