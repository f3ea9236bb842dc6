package remote

import (
	"slices"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PlatformMatches says whether an image for have is one to take where
// want is asked for, as containerd's platforms.Only has it (the matcher
// containerd, nerdctl and BuildKit choose with, so an index picks here what
// it picks there): the same OS and architecture in any of their spellings,
// the same variant or an older one that runs where the wanted one does
// (arm/v7 takes arm/v6, amd64/v3 takes amd64/v2 and amd64; amd64 takes
// 386). An OS version or features asked for must be the image's too, as
// go-containerregistry has it.
func PlatformMatches(have, want v1.Platform) bool {
	_, ok := platformRank(have, want)
	return ok
}

// platformRank is have's place in containerd's order of preference for
// want (0: want itself; then its older variants, best first), and whether
// it is in it at all. (Written here, not imported: containerd's platforms
// module brings its logger into remote and what imports it; see the
// package doc.)
func platformRank(have, want v1.Platform) (int, bool) {
	if want.OSVersion != "" && have.OSVersion != want.OSVersion {
		return 0, false
	}
	for _, f := range want.OSFeatures {
		if !slices.Contains(have.OSFeatures, f) {
			return 0, false
		}
	}
	h := normalPlatform(have)
	for i, p := range platformVector(normalPlatform(want)) {
		if h.OS == p.OS && h.Architecture == p.Architecture && h.Variant == p.Variant {
			return i, true
		}
	}
	return 0, false
}

// platformVector is containerd's list of what runs where want does, best
// first: want; for amd64/vN the older levels, then 386; for arm/vN the
// older variants down to v5; for arm64 (v9: then v8) 32-bit arm v8 down
// to v5.
func platformVector(want v1.Platform) []v1.Platform {
	out := []v1.Platform{{OS: want.OS, Architecture: want.Architecture, Variant: want.Variant}}
	with := func(arch, variant string) {
		out = append(out, v1.Platform{OS: want.OS, Architecture: arch, Variant: variant})
	}
	level, err := strconv.Atoi(strings.TrimPrefix(want.Variant, "v"))
	switch want.Architecture {
	case "amd64":
		if err == nil {
			for level--; level >= 2; level-- {
				with("amd64", "v"+strconv.Itoa(level))
			}
			with("amd64", "")
		}
		with("386", "")
	case "arm":
		if err == nil {
			for level--; level >= 5; level-- {
				with("arm", "v"+strconv.Itoa(level))
			}
		}
	case "arm64":
		if strings.HasPrefix(want.Variant, "v9") {
			with("arm64", "") // v8
		}
		for level := 8; level >= 5; level-- {
			with("arm", "v"+strconv.Itoa(level))
		}
	}
	return out
}

// normalPlatform is p with containerd's spelling of its OS, architecture
// and variant.
func normalPlatform(p v1.Platform) v1.Platform {
	p.OS = strings.ToLower(p.OS)
	arch, variant := strings.ToLower(p.Architecture), strings.ToLower(p.Variant)
	switch arch {
	case "i386":
		arch, variant = "386", ""
	case "x86_64", "x86-64", "amd64":
		arch = "amd64"
		if variant == "v1" {
			variant = ""
		}
	case "aarch64", "arm64":
		arch = "arm64"
		switch variant {
		case "8", "v8", "v8.0":
			variant = ""
		case "9", "9.0", "v9.0":
			variant = "v9"
		}
	case "armhf":
		arch, variant = "arm", "v7"
	case "armel":
		arch, variant = "arm", "v6"
	case "arm":
		switch variant {
		case "", "7":
			variant = "v7"
		case "5", "6", "8":
			variant = "v" + variant
		}
	}
	p.Architecture, p.Variant = arch, variant
	return p
}
