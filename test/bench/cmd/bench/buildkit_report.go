package main

import (
	"fmt"
	"io"
)

// renderBuildKit writes the BuildKit comparison: its method, the table and
// issue 16's targets.
func renderBuildKit(w io.Writer, sums map[key]*summary) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("## BuildKit on each snapshotter (issue 16)\n\n")
	get := func(sys string) *summary { return sums[key{"wan", "golang", bkWorkload, sys, "cold"}] }
	ov, st, sg := get(bkOverlay), get(bkStrata), get(bkStargz)
	if ov == nil && st == nil && sg == nil {
		p("_Not measured in this run._\n\n")
		return
	}
	p(`Each cold run starts, on a fresh tmpfs at `+"`.bench/run/ctd`"+`, a private containerd with the snapshotter under test, then buildkitd
v0.34.2 (built from `+"`test/buildkit`"+`) with only its containerd worker, drops the page cache, and times `+"`buildctl build`"+` of

`+"```dockerfile\n%s```"+`

with BASE the eStargz golang image, pushed with `+"`--output type=image,name=…,push=true,store=false`"+` under a new tag of the
base's repository (so no export needs the base's blobs: in another repository BuildKit on overlayfs uploaded all of them again),
through `+"`test/proxy`"+` over wan both ways.

- **overlayfs**: buildkitd's `+"`--containerd-worker-snapshotter=overlayfs`"+`: BuildKit pulls and unpacks the base whole.
- **strata**: `+"`strata daemon`"+` (fresh root) registered in containerd as the proxy plugin `+"`stargz`"+`, the only name for which BuildKit
  takes its lazy path; buildkitd's snapshotter `+"`stargz`"+`.
- **stargz**: stargz-snapshotter v0.19's snapshotter service (`+"`stargz-bench --snapshotter-socket`"+`, default config, background
  fetch on) as the proxy plugin `+"`stargz`"+`.
- After each lazy run at least as many committed snapshots as the base has layers must carry the snapshotter's remote label,
  or the run fails (a base layer was downloaded).
- Cells: median seconds (min–max, n runs) · MB down and up · requests.

| step | overlayfs (full pull) | strata | stargz | strata/overlayfs | strata/stargz |
|---|---|---|---|---:|---:|
| `+"`FROM golang` + `RUN go version`"+`, push | %s | %s | %s | %s | %s |

`, bkDockerfile, bkCell(ov), bkCell(st), bkCell(sg), ratio(st, ov), ratio(st, sg))
	p("| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range bkTargets(ov, st, sg) {
		p("| %s | %s | %s |\n", t.What, t.Measured, verdict(t))
	}
	p("\n")
}

func bkCell(s *summary) string {
	if s == nil {
		return "—"
	}
	if s.N == 0 {
		return fmt.Sprintf("FAILED (%d)", s.Errors)
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f) n=%d · %s · %d req", s.Med, s.Min, s.Max, s.N, mbBoth(s), s.Requests)
}

// bkTargets: over wan, Strata ≥ 5× sooner than overlayfs and sooner than
// stargz-snapshotter.
func bkTargets(ov, st, sg *summary) []target {
	ok := func(s *summary) bool { return s != nil && s.N > 0 }
	t1 := target{What: "wan cold, golang: BuildKit build + push on Strata ≥ 5× sooner than on overlayfs (issue 16)"}
	if ok(st) && ok(ov) {
		t1.Measured = fmt.Sprintf("%.2f s vs %.2f s (%.1f×; n=%d and %d); %s vs %s", st.Med, ov.Med, ov.Med/st.Med, st.N, ov.N, mbBoth(st), mbBoth(ov))
		t1.Met = check(ov.Med >= 5*st.Med)
	}
	t2 := target{What: "wan cold, golang: BuildKit build + push on Strata sooner than on stargz-snapshotter (issue 16)"}
	if ok(st) && ok(sg) {
		t2.Measured = fmt.Sprintf("%.2f s vs %.2f s (n=%d and %d); %s vs %s", st.Med, sg.Med, st.N, sg.N, mbBoth(st), mbBoth(sg))
		t2.Met = check(st.Med < sg.Med)
	}
	return []target{t1, t2}
}
