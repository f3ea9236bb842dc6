package main

import (
	"bytes"
	"strings"
	"testing"
)

// buildRun makes the results of one cold run of a step from its phases,
// as measureBuild does.
func buildRun(sys, step string, phases ...phase) []result {
	base := result{Profile: "wan", Image: "golang", Workload: step, System: sys, State: "cold"}
	s, _ := buildStepByName(step)
	return buildResults(base, s, phases)
}

func TestBuildResultsFromPhases(t *testing.T) {
	rs := buildRun(bldBuildah, "small",
		phase{Name: "from", Seconds: 22, BytesOut: 147e6, Requests: 5},
		phase{Name: "run 1", Seconds: 1},
		phase{Name: "run 2", Seconds: 0.5},
		phase{Name: "commit+push", Seconds: 1.5, BytesOut: 1e3, BytesIn: 2e3, Requests: 9})
	if len(rs) != 2 {
		t.Fatalf("%d results, want the step and %s", len(rs), firstRun)
	}
	step, first := rs[0], rs[1]
	if step.Workload != "small" || step.Seconds != 25 || step.MountSeconds != 22 || step.Bytes != 147e6+1e3 ||
		step.BytesIn != 2e3 || step.Requests != 14 || step.SharedMount {
		t.Errorf("step %+v", step)
	}
	if first.Workload != firstRun || first.Seconds != 23 || first.MountSeconds != 22 || first.Bytes != 147e6 ||
		first.BytesIn != 0 || !first.SharedMount || len(first.Phases) != 2 {
		t.Errorf("%s %+v", firstRun, first)
	}
	if rs := buildRun(bldStrata, "compile", phase{Name: "from", Seconds: 1}, phase{Name: "run 1", Seconds: 12}); len(rs) != 1 {
		t.Errorf("compile gave %d results, want 1", len(rs))
	}
}

// TestBuildTargets: the 10× targets compare medians end to end; the
// compiling step's limit is buildah's median time without its pull + 2 s.
func TestBuildTargets(t *testing.T) {
	res := &runResults{}
	for range 3 {
		res.Results = append(res.Results, buildRun(bldStrata, "small",
			phase{Name: "from", Seconds: 0.5, BytesOut: 1e6}, phase{Name: "run 1", Seconds: 1.5, BytesOut: 8e6},
			phase{Name: "run 2", Seconds: 0.3}, phase{Name: "commit+push", Seconds: 0.7, BytesIn: 1e6})...)
		res.Results = append(res.Results, buildRun(bldBuildah, "small",
			phase{Name: "from", Seconds: 22.4, BytesOut: 147.6e6}, phase{Name: "run 1", Seconds: 0.8},
			phase{Name: "run 2", Seconds: 0.3}, phase{Name: "commit+push", Seconds: 1.5, BytesIn: 2e6})...)
	}
	// compile: buildah 22 + 10 + 2 → limit 14 s; strata 13, 15, 15.5 → median 15: missed.
	for i, secs := range []float64{11, 13, 13.5} {
		res.Results = append(res.Results, buildRun(bldStrata, "compile",
			phase{Name: "from", Seconds: 0.5}, phase{Name: "run 1", Seconds: secs}, phase{Name: "commit+push", Seconds: 1.5})...)
		res.Results = append(res.Results, buildRun(bldBuildah, "compile",
			phase{Name: "from", Seconds: 22 + float64(i)}, phase{Name: "run 1", Seconds: 10}, phase{Name: "commit+push", Seconds: 2})...)
	}
	var buf bytes.Buffer
	if err := renderReport(&buf, res); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"(issue 12) | 2.00 s vs 23.20 s (11.6×; n=3 and 3); strata 9.0 MB down, 0.0 kB up, buildah 147.6 MB down, 0.0 kB up | met |",
		"(issue 13) | 3.00 s vs 25.00 s (8.3×; n=3 and 3); strata 9.0 MB down, 1.0 MB up, buildah 147.6 MB down, 2.0 MB up | **MISSED** |",
		"plus 2 s (issue 13) | 15.00 s vs limit 14.00 s (buildah 35.00 s, of which pull 23.00 s; n=3 and 3)",
		"| wan | golang | small | 3.00 (3.00–3.00) n=3 · from 0.50 s · 9.0 MB down · 1.0 MB up",
		"| small (wan) | bld-buildah | from 22.40 s · 147.6 MB · 0.0 kB; run 1 0.80 s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if !strings.Contains(out, "14.00 s (buildah 35.00 s, of which pull 23.00 s; n=3 and 3); strata 0.0 kB down, 0.0 kB up, buildah 0.0 kB down, 0.0 kB up | **MISSED** |") {
		t.Errorf("compile target not missed")
	}
	if t.Failed() {
		t.Log(out)
	}
}

// TestPlanRows: every entry is of one kind; "build" runs the build steps
// and the Dockerfile builds, "all" everything but the Dockerfile builds and
// the far link's starts (the full plan only).
func TestPlanRows(t *testing.T) {
	for _, quick := range []bool{true, false} {
		p := planFor(quick)
		b, df := p.rows("build"), p.rows("dockerfile")
		if len(b) == 0 || len(df) == 0 {
			t.Fatalf("quick=%v: %d build and %d Dockerfile entries", quick, len(b), len(df))
		}
		for _, e := range b {
			if !e.Build && !e.Dockerfile && !e.BuildKit || e.Image != "golang" || e.Profile.Name != "wan" {
				t.Errorf("quick=%v: build rows hold %+v", quick, e)
			}
			for _, w := range e.Workloads {
				_, step := buildStepByName(w)
				_, file := dockerfileByName(w)
				if e.Build && !step || e.Dockerfile && !file {
					t.Errorf("quick=%v: %q is no workload of its entry %+v", quick, w, e)
				}
			}
		}
		for _, e := range p.rows("all") {
			if e.Dockerfile {
				t.Errorf("quick=%v: all holds a Dockerfile entry", quick)
			}
		}
		far, gz, mem := p.rows("far"), p.rows("gzip"), p.rows("memory")
		if quick != (len(far) == 0) || quick != (len(gz) == 0) || quick != (len(mem) == 0) {
			t.Errorf("quick=%v: %d far entries, %d gzip entries, %d memory entries", quick, len(far), len(gz), len(mem))
		}
		if n := len(p.rows("mount")) + len(p.rows("containerd")) + len(b) + len(far) + len(gz) + len(mem); n != len(p) || len(p.rows("all"))+len(df)+len(far)+len(gz) != len(p) {
			t.Errorf("quick=%v: kinds cover %d of %d entries", quick, n, len(p))
		}
		for _, v := range rowKinds {
			if len(p.rows(v)) == 0 && !(quick && (v == "far" || v == "gzip" || v == "memory")) {
				t.Errorf("quick=%v: --rows %s runs nothing", quick, v)
			}
		}
	}
}

func TestCPUSeconds(t *testing.T) {
	// utime 250 and stime 50 ticks; the name holds a space and a ')'.
	stat := "4242 (strata d)mn) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 30 10 12 0 100 0 0"
	if got, err := cpuSeconds(stat); err != nil || got != 3 {
		t.Errorf("cpuSeconds = %v, %v; want 3", got, err)
	}
	if _, err := cpuSeconds("garbage"); err == nil {
		t.Error("no error for a malformed line")
	}
}

// TestBuildKitTargets renders the BuildKit section from made-up runs: 3 s
// against 20 s on overlayfs is 6.7× (met), against stargz's 2.5 s not
// sooner (missed); and says so when the rows did not run.
func TestBuildKitTargets(t *testing.T) {
	var rs []result
	for i, secs := range map[string][]float64{bkOverlay: {20}, bkStrata: {3, 2.9, 3.1}, bkStargz: {2.5, 2.4, 2.6}} {
		for run, s := range secs {
			rs = append(rs, result{Profile: "wan", Image: "golang", Workload: bkWorkload, System: i, State: "cold",
				Run: run + 1, Seconds: s, Bytes: 9e6, BytesIn: 2e3, Requests: 20})
		}
	}
	var b strings.Builder
	renderBuildKit(&b, summarize(rs))
	out := b.String()
	for _, want := range []string{
		"| `FROM golang` + `RUN go version`, push | 20.00 (20.00–20.00) n=1 · 9.0 MB down, 2.0 kB up · 20 req | 3.00 (2.90–3.10) n=3",
		"≥ 5× sooner than on overlayfs (issue 16) | 3.00 s vs 20.00 s (6.7×; n=3 and 1)",
		"| met |",
		"sooner than on stargz-snapshotter (issue 16) | 3.00 s vs 2.50 s (n=3 and 3)",
		"| **MISSED** |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	renderBuildKit(&b, summarize(nil))
	if !strings.Contains(b.String(), "_Not measured in this run._") {
		t.Errorf("an empty run renders\n%s", b.String())
	}
}
