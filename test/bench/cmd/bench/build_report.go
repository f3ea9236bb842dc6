package main

import (
	"fmt"
	"io"
	"strings"
)

// renderBuild writes the build-path comparison: its method, a table of
// the steps end to end, one of their phases, and issues 12 and 13's
// targets.
func renderBuild(w io.Writer, res *runResults, sums map[key]*summary) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("## Build path (issues 12 and 13)\n\n")
	rows := buildRows(sums)
	if len(rows) == 0 {
		p("_Not measured in this run._\n\n")
		return
	}
	p(`Each cold run mounts a fresh tmpfs at `+"`.bench/run/build`"+` for all of the system's state, drops the page cache, then times
the step from the base image in the registry to the new image pushed back to it (repository `+"`golang-built`"+`, so the base's
blobs are found in another repository of the same registry). Both systems reach the registry only through `+"`test/proxy`"+`
with the row's profile, both ways: uploads are paced on their own half of the link at the same rate.

- **strata**: `+"`strata mount --rw --insecure`"+` of the eStargz image, which starts a daemon on a fresh state root (its start is timed:
  buildah has no daemon); `+"`strata run`"+` of each command; `+"`strata commit --insecure`"+` (eStargz layer) pushes the new layer,
  config and manifest, the base's blobs mounted from their repository, never downloaded.
- **buildah** (%s, apt): own storage under the tmpfs (`+"`--root`, `--runroot`, `--storage-driver overlay`"+`);
  `+"`buildah from --tls-verify=false`"+` pulls the gzip image whole; `+"`buildah run --isolation chroot`"+` of each command;
  `+"`buildah commit`"+` to its storage, then `+"`buildah push --tls-verify=false`"+`.
- Both run the same commands with the same environment: %s.
- Steps: %s.
- Cells: median seconds end to end (min–max, n runs) · median of the from share (`+"`mount --rw`"+` / `+"`buildah from`"+`, the pull) ·
  MB down (registry → system) and up (system → registry) · requests.

| profile | image | step | strata | buildah | strata/buildah |
|---|---|---|---|---|---:|
%s

`, buildahVersion(res.Machine.Buildah), "`"+strings.Join(goEnv, " ")+"`", stepList(), strings.Join(rows, "\n"))
	var steps []string
	for _, s := range buildSteps {
		steps = append(steps, s.Name)
	}
	if ph := phaseRows(res.Results, steps, bldSystems); len(ph) > 0 {
		p("Where the time went (medians over the runs; seconds · down · up):\n\n| step | system | %s |\n|---|---|%s\n%s\n\n",
			"phases", "---|", strings.Join(ph, "\n"))
	}
	p("| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range buildTargets(res.Results, sums) {
		p("| %s | %s | %s |\n", t.What, t.Measured, verdict(t))
	}
	p("\n")
}

func buildahVersion(v string) string {
	if v == "" {
		return "buildah"
	}
	return v
}

func stepList() string {
	var out []string
	out = append(out, "`"+firstRun+"`: the small step up to the answer of its first command, `go version` (issue 12)")
	for _, s := range buildSteps {
		out = append(out, "`"+s.Name+"`: "+s.Desc)
	}
	return strings.Join(out, "; ")
}

var buildWorkloads = []string{firstRun, "small", "compile", "compile-rec"}

// baselineOf is the step whose buildah runs a step is compared with: a
// recorded step's own (Strata only) is the step it was recorded on.
func baselineOf(wl string) string { return strings.TrimSuffix(wl, "-rec") }

func buildRows(sums map[key]*summary) []string {
	var rows []string
	for _, prof := range profileOrder {
		for _, wl := range buildWorkloads {
			st, bu := sums[key{prof, "golang", wl, bldStrata, "cold"}], sums[key{prof, "golang", baselineOf(wl), bldBuildah, "cold"}]
			if st == nil && (bu == nil || wl != baselineOf(wl)) {
				continue
			}
			rows = append(rows, fmt.Sprintf("| %s | golang | %s | %s | %s | %s |", prof, wl, buildCell(st), buildCell(bu), ratio(st, bu)))
		}
	}
	return rows
}

func buildCell(s *summary) string {
	from := ""
	if s != nil {
		from = fmt.Sprintf(" · from %.2f s", s.MountMed)
	}
	return runCell(s, from)
}

// runCell is a build row's cell: median seconds (spread, runs), extra,
// then bytes both ways and requests.
func runCell(s *summary, extra string) string {
	if s == nil {
		return "—"
	}
	if s.N == 0 {
		return fmt.Sprintf("FAILED (%d)", s.Errors)
	}
	c := fmt.Sprintf("%.2f (%.2f–%.2f) n=%d%s · %s down · %s up · %d req",
		s.Med, s.Min, s.Max, s.N, extra, size(float64(s.Bytes)), size(float64(s.BytesIn)), s.Requests)
	if s.Errors > 0 {
		c += fmt.Sprintf(" (%d failed)", s.Errors)
	}
	return c
}

// phaseRows gives, for each of the workloads (build steps or Dockerfiles)
// and systems, the median of each phase over the cold runs that succeeded.
func phaseRows(rs []result, workloads, systems []string) []string {
	var rows []string
	for _, prof := range profileOrder {
		for _, wl := range workloads {
			for _, sys := range systems {
				var runs [][]phase
				for _, r := range rs {
					if r.Profile == prof && r.Workload == wl && r.System == sys && r.State == "cold" && r.Err == "" && len(r.Phases) > 0 {
						runs = append(runs, r.Phases)
					}
				}
				if len(runs) == 0 {
					continue
				}
				var cells []string
				for i, ph := range runs[0] {
					var secs, down, up []float64
					for _, run := range runs {
						if i < len(run) {
							secs = append(secs, run[i].Seconds)
							down = append(down, float64(run[i].BytesOut))
							up = append(up, float64(run[i].BytesIn))
						}
					}
					cells = append(cells, fmt.Sprintf("%s %.2f s · %s · %s", ph.Name, median(secs), size(median(down)), size(median(up))))
				}
				var again []float64
				for _, r := range rs {
					if r.Profile == prof && r.Workload == wl && r.System == sys && r.Again > 0 {
						again = append(again, r.Again)
					}
				}
				if len(again) > 0 {
					cells = append(cells, fmt.Sprintf("(first command again, all local: %.2f s)", median(again)))
				}
				var cpu, rss, peak []float64
				for _, r := range rs {
					if r.Profile == prof && r.Workload == wl && r.System == sys && r.State == "cold" && r.DaemonCPU > 0 {
						cpu = append(cpu, r.DaemonCPU)
					}
					if r.Profile == prof && r.Workload == wl && r.System == sys && r.State == "cold" && r.RSS > 0 {
						rss, peak = append(rss, float64(r.RSS)), append(peak, float64(r.PeakRSS))
					}
				}
				if len(cpu) > 0 {
					cells = append(cells, fmt.Sprintf("(daemon CPU %.2f s)", median(cpu)))
				}
				if len(rss) > 0 {
					cells = append(cells, fmt.Sprintf("(daemon RSS %.0f MB, peak %.0f MB)", median(rss)/1e6, median(peak)/1e6))
				}
				rows = append(rows, fmt.Sprintf("| %s (%s) | %s | %s |", wl, prof, sys, strings.Join(cells, "; ")))
			}
		}
	}
	return rows
}

// afterFrom is the median over a system's runs of a step of their time
// without the from phase: buildah's own time minus its pull.
func afterFrom(rs []result, prof, step, sys string) (float64, int) {
	var xs []float64
	for _, r := range rs {
		if r.Profile == prof && r.Workload == step && r.System == sys && r.State == "cold" && r.Err == "" {
			xs = append(xs, r.Seconds-r.MountSeconds)
		}
	}
	return median(xs), len(xs)
}

func mbBoth(s *summary) string {
	return fmt.Sprintf("%s down, %s up", size(float64(s.Bytes)), size(float64(s.BytesIn)))
}

// size is a byte count in MB, or kB below 1 MB: a step's upload is a few
// kilobytes.
func size(n float64) string {
	if n < 1e6 {
		return fmt.Sprintf("%.1f kB", n/1e3)
	}
	return fmt.Sprintf("%.1f MB", n/1e6)
}

// buildTargets are issues 12 and 13's targets, over wan, cold, golang.
func buildTargets(rs []result, sums map[key]*summary) []target {
	get := func(wl, sys string) *summary {
		s := sums[key{"wan", "golang", wl, sys, "cold"}]
		if s == nil || s.N == 0 {
			return nil
		}
		return s
	}
	var ts []target
	for _, c := range []struct{ wl, what string }{
		{firstRun, "wan cold, golang: `strata mount --rw` + `strata run -- go version` ≥ 10× sooner than `buildah from` + `buildah run` (issue 12)"},
		{"small", "wan cold, golang: small step (`go version`, write a file, commit, push) ≥ 10× sooner end to end than buildah (issue 13)"},
	} {
		t := target{What: c.what}
		if st, bu := get(c.wl, bldStrata), get(c.wl, bldBuildah); st != nil && bu != nil {
			t.Measured = fmt.Sprintf("%.2f s vs %.2f s (%.1f×; n=%d and %d); strata %s, buildah %s",
				st.Med, bu.Med, bu.Med/st.Med, st.N, bu.N, mbBoth(st), mbBoth(bu))
			t.Met = check(bu.Med >= 10*st.Med)
		}
		ts = append(ts, t)
	}
	for _, c := range []struct{ wl, what string }{
		{"compile", "wan cold, golang: compiling step (`go build`, commit, push) no slower than buildah's own time minus its pull, plus 2 s (issue 13)"},
		{"compile-rec", "the same, on the image with a recorded prefetch list (a second build on a fresh machine; `compile-rec`)"},
	} {
		t := target{What: c.what}
		if st, bu := get(c.wl, bldStrata), get("compile", bldBuildah); st != nil && bu != nil {
			rest, n := afterFrom(rs, "wan", "compile", bldBuildah)
			limit := rest + 2
			t.Measured = fmt.Sprintf("%.2f s vs limit %.2f s (buildah %.2f s, of which pull %.2f s; n=%d and %d); strata %s, buildah %s",
				st.Med, limit, bu.Med, bu.MountMed, st.N, n, mbBoth(st), mbBoth(bu))
			t.Met = check(st.Med <= limit)
		}
		ts = append(ts, t)
	}
	return ts
}
