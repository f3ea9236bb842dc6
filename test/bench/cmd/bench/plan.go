package main

import (
	"slices"

	"github.com/stratafs/strata/test/proxy"
)

// entry is one block of the matrix: every workload on the image, for every
// system, runs times, over one network profile.
type entry struct {
	Profile   proxy.Profile
	Image     string
	Workloads []string
	Systems   []string
	Runs      int
	// PullRuns, when set, caps the runs of the full-pull baselines
	// (fullpull, ctd-overlayfs, bld-buildah): they are the slowest
	// systems by far and their spread is the link's, not noise.
	PullRuns int
	// ColdOnly lists the workloads whose warm and hot repeats are skipped.
	ColdOnly []string
	// Containerd entries run each workload's command with `ctr run` in a
	// private containerd, for the ctd* systems (containerd_run.go).
	Containerd bool
	// Build entries measure build steps (Workloads names buildSteps) for
	// the bld* systems (build.go).
	Build bool
	// Dockerfile entries build whole Dockerfiles (Workloads names
	// dockerfiles) for the df* systems (dockerfile.go).
	Dockerfile bool
	// BuildKit entries build bkDockerfile with BuildKit's containerd
	// worker for the bk* systems (buildkit.go).
	BuildKit bool
	// Gzip entries compare mounts of the unmodified gzip image, with and
	// without a pushed index (issue 14), with the eStargz mount and the
	// full pull.
	Gzip bool
	// Memory entries measure one daemon's memory with the memory row's
	// images all mounted (memory.go, issue 18); Image is the first of
	// them.
	Memory bool
}

func (e entry) runsOf(system string) int {
	if (system == "fullpull" || system == ctdOverlay || system == bldBuildah || system == bkOverlay) && e.PullRuns > 0 {
		return min(e.PullRuns, e.Runs)
	}
	return e.Runs
}

type plan []entry

func (p plan) images() []string {
	var out []string
	for _, e := range p {
		names := []string{e.Image}
		if e.Memory {
			names = nil
			for i := range manyImages {
				names = append(names, manyName(i))
			}
		}
		for _, n := range names {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

var allSystems = []string{"strata", "fullpull", "stargz"}

// startup is what a user notices first: run a program from the image.
var startup = map[string][]string{
	"debian": {"true", "cat", "find"},
	"golang": {"goversion"},
	"python": {"python"},
}

// planFor returns the QUICK subset or the full matrix. QUICK keeps the
// measurements the targets are about: start-up workloads over wan,
// `tar` of smallfiles over wan (Strata and full pull only: stargz takes
// minutes there), warm throughput against local disk over lo, and the
// small build step over wan, once each (buildah's pull of the base alone
// takes ~25 s). The full pull baseline runs once per QUICK entry (it alone
// would take 5 minutes).
//
// The full matrix gives most rows 5 runs of every system in them, and fits
// in 40 minutes by leaving out the rows that cost minutes and say nothing
// the others do not: smallfiles is read over lo and wan (not lan), by
// stargz-snapshotter only with cat and find (its `tar` of 50,000 files
// takes ~4 minutes a run over wan), and warm and hot `tar` over lo only
// (they read the local cache, whatever the link); bigfile is read over lo only
// (over lan and wan every system is bound by the link: 10 and 90 s a
// run); containerd runs over wan. The full pull is done once a run and
// serves all the workloads of its row (runner.measure). The containerd
// rows, the build steps (over wan, where their targets are) and the full
// pull over lan (where no target is) get 3 runs instead of 5: a build
// step's baseline costs a minute a run (pull, compile, commit, push), and
// the matrix must stay under 40 minutes. The BuildKit builds (issue 16)
// run 3 times on each snapshotter, about 2 minutes in all. Both plans end
// with the Dockerfile builds, which only --rows build or dockerfile runs
// (kindsOf).
func planFor(quick bool) plan {
	if quick {
		return plan{
			{Profile: proxy.ProfileWAN, Image: "debian", Workloads: []string{"true"}, Systems: allSystems, Runs: 3, PullRuns: 1},
			{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{"goversion"}, Systems: allSystems, Runs: 3, PullRuns: 1},
			{Profile: proxy.ProfileWAN, Image: "python", Workloads: []string{"python"}, Systems: allSystems, Runs: 3, PullRuns: 1},
			{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{"goversion"}, Systems: ctdSystems, Runs: 3, PullRuns: 1, Containerd: true},
			bkEntry(3, 1),
			{Profile: proxy.ProfileWAN, Image: "smallfiles", Workloads: []string{"tar"}, Systems: []string{"strata", "fullpull"}, Runs: 1, ColdOnly: []string{"tar"}},
			{Profile: proxy.ProfileLo, Image: "smallfiles", Workloads: []string{"find"}, Systems: []string{"strata", "fullpull"}, Runs: 3, PullRuns: 1},
			{Profile: proxy.ProfileLo, Image: "bigfile", Workloads: []string{"seqread"}, Systems: []string{"strata", "fullpull"}, Runs: 3, PullRuns: 1},
			{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{"small"}, Systems: bldSystems, Runs: 1, Build: true},
			dockerfileEntry(1),
		}
	}
	const runs = 5
	var p plan
	for _, prof := range []proxy.Profile{proxy.ProfileLo, proxy.ProfileLAN, proxy.ProfileWAN} {
		for _, img := range []string{"debian", "golang", "python"} {
			e := entry{Profile: prof, Image: img, Workloads: startup[img], Systems: allSystems, Runs: runs}
			if prof == proxy.ProfileLAN {
				e.PullRuns = 3 // no target is over lan
			}
			p = append(p, e)
		}
		switch prof {
		case proxy.ProfileLo:
			p = append(p,
				entry{Profile: prof, Image: "smallfiles", Workloads: []string{"cat", "find", "tar"}, Systems: []string{"strata", "fullpull"}, Runs: runs},
				entry{Profile: prof, Image: "smallfiles", Workloads: []string{"cat", "find"}, Systems: []string{"stargz"}, Runs: runs},
				entry{Profile: prof, Image: "bigfile", Workloads: []string{"seqread", "randread"}, Systems: allSystems, Runs: runs})
		case proxy.ProfileWAN:
			p = append(p, entry{Profile: prof, Image: "smallfiles", Workloads: []string{"cat", "find", "tar"}, Systems: []string{"strata", "fullpull"}, Runs: runs, ColdOnly: []string{"tar"}},
				// Issue 18: a cold sequential read at the link's speed
				// (about 90 s a run; the link, not Strata, sets the time).
				entry{Profile: prof, Image: "bigfile", Workloads: []string{"seqread"}, Systems: []string{"strata"}, Runs: 1, ColdOnly: []string{"seqread"}})
		}
	}
	return append(p,
		entry{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{"goversion"}, Systems: ctdSystems, Runs: 3, Containerd: true},
		entry{Profile: proxy.ProfileWAN, Image: "python", Workloads: []string{"python"}, Systems: ctdSystems, Runs: 3, Containerd: true},
		bkEntry(3, 3),
		entry{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{"small", "compile"}, Systems: bldSystems, Runs: 3, Build: true},
		entry{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{"compile-rec"}, Systems: []string{bldStrata}, Runs: 3, Build: true},
		dockerfileEntry(3),
		entry{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{dfCompileRec.Name}, Systems: []string{dfStrata}, Runs: 3, Dockerfile: true},
		farEntry("golang", "goversion"), farEntry("python", "python"),
		gzipEntry("golang", "goversion"), gzipEntry("python", "python"), gzipWalkEntry("golang"), gzipWalkEntry("python"),
		memoryEntry(2))
}

// memoryEntry is issue 18's memory row: one daemon, the row's images all
// mounted, walked and read, over lo (the link plays no part in memory).
func memoryEntry(runs int) entry {
	return entry{Profile: proxy.ProfileLo, Image: memoryImage, Workloads: []string{memWalk}, Systems: []string{"strata"}, Runs: runs, Memory: true}
}

// gzipEntry is a start from the unmodified gzip image over wan (issue
// 14): Strata from pushed indexes (with and without a recorded list),
// Strata without, SOCI with its own index on the same layers, the
// zstd:chunked form, the eStargz mount and the full pull; cold only.
// Only `make bench ROWS=gzip` runs it.
func gzipEntry(img, wl string) entry {
	return entry{Profile: proxy.ProfileWAN, Image: img, Workloads: []string{wl},
		Systems: []string{strataGzip, strataGzipRec, strataGzipStream, sociName, strataZstdChunked, "strata", "fullpull"},
		Runs:    3, PullRuns: 1, ColdOnly: []string{wl}, Gzip: true}
}

// gzipWalkEntry is `find` and then `tar` of the whole image over wan,
// cold, from the gzip image with its indexes, the zstd:chunked form, the
// eStargz form and the full pull (issue 14). Two runs: a `tar` reads the
// whole image over the link (10 to 20 s a run).
func gzipWalkEntry(img string) entry {
	return entry{Profile: proxy.ProfileWAN, Image: img, Workloads: []string{"find", "tar"},
		Systems: []string{strataGzip, strataZstdChunked, "strata", "fullpull"},
		Runs:    2, PullRuns: 1, ColdOnly: []string{"find", "tar"}, Gzip: true}
}

// needsSystem reports whether an entry of the plan runs system on image.
func (p plan) needsSystem(image, system string) bool {
	for _, e := range p {
		if e.Image == image && slices.Contains(e.Systems, system) {
			return true
		}
	}
	return false
}

// farEntry is a start over the far link (issue 18): Strata without and
// with a recorded prefetch list, on the image with landmarks for the start
// and on its plain form, and the full pull once; cold only.
func farEntry(img, wl string) entry {
	return entry{Profile: proxy.ProfileFar, Image: img, Workloads: []string{wl}, Systems: []string{"strata", strataRec, strataPlain, strataPlainRec, "fullpull"},
		Runs: 3, PullRuns: 1, ColdOnly: []string{wl}}
}

// dockerfileEntry is issue 15's Dockerfile builds, over wan where its
// targets are. Both plans hold it, but ROWS=all leaves it out (kindsOf).
func dockerfileEntry(runs int) entry {
	var names []string
	for _, d := range dockerfiles {
		names = append(names, d.Name)
	}
	return entry{Profile: proxy.ProfileWAN, Image: "golang", Workloads: names, Systems: dfSystems, Runs: runs, Dockerfile: true}
}

// bkEntry is issue 16's BuildKit build, over wan where its target is:
// runs of each system, pullRuns of BuildKit on overlayfs (a full pull).
func bkEntry(runs, pullRuns int) entry {
	return entry{Profile: proxy.ProfileWAN, Image: "golang", Workloads: []string{bkWorkload}, Systems: bkSystems,
		Runs: runs, PullRuns: pullRuns, BuildKit: true}
}

// rowKinds are the values of --rows: which kind of entries to run.
var rowKinds = []string{"all", "mount", "containerd", "buildkit", "build", "dockerfile", "far", "gzip", "memory"}

// kindsOf says which kinds of entry each value of --rows runs. The
// Dockerfile builds are left out of "all" (`make bench`, QUICK or not):
// a run of both systems over both Dockerfiles took 110 s in the first
// runs (buildah pulls the base twice), so 3 runs would take the full
// matrix, already estimated at 39.7 minutes, past its 40, and one run
// QUICK (about 290 s) past its 5.
// "build" runs them with the build steps, whose `buildah from` gives the
// buildah pull time the compiling Dockerfile's target needs, and with the
// BuildKit rows, whose BuildKit on stargz-snapshotter is the small
// Dockerfile's other baseline;
// "dockerfile" runs them alone (that target is then not judged);
// "far" runs the starts over the far link (issue 18's recorded prefetch),
// which "all" leaves out for the same time budget.
var kindsOf = map[string][]string{
	"far":        {"far"},
	"gzip":       {"gzip"},
	"memory":     {"memory"},
	"all":        {"mount", "containerd", "buildkit", "build", "memory"},
	"mount":      {"mount"},
	"containerd": {"containerd"},
	"buildkit":   {"buildkit"},
	"build":      {"build", "dockerfile", "buildkit"},
	"dockerfile": {"dockerfile"},
}

func (e entry) kind() string {
	switch {
	case e.Memory:
		return "memory"
	case e.Profile.Name == proxy.ProfileFar.Name:
		return "far"
	case e.Gzip:
		return "gzip"
	case e.Dockerfile:
		return "dockerfile"
	case e.Build:
		return "build"
	case e.BuildKit:
		return "buildkit"
	case e.Containerd:
		return "containerd"
	default:
		return "mount"
	}
}

// rows keeps the entries that --rows value runs ("" is "all").
func (p plan) rows(value string) plan {
	if value == "" {
		value = "all"
	}
	var out plan
	for _, e := range p {
		if slices.Contains(kindsOf[value], e.kind()) {
			out = append(out, e)
		}
	}
	return out
}

// pick keeps, for development, only the named workloads (build steps,
// Dockerfiles) and systems of each entry, and sets every entry's runs when
// runs > 0; empty lists keep everything. Entries left with no workload or
// no system are dropped.
func (p plan) pick(workloads, systems []string, runs int) plan {
	var out plan
	for _, e := range p {
		if len(workloads) > 0 {
			e.Workloads = slices.DeleteFunc(slices.Clone(e.Workloads), func(w string) bool { return !slices.Contains(workloads, w) })
		}
		if len(systems) > 0 {
			e.Systems = slices.DeleteFunc(slices.Clone(e.Systems), func(s string) bool { return !slices.Contains(systems, s) })
		}
		if runs > 0 {
			e.Runs, e.PullRuns = runs, 0
		}
		if len(e.Workloads) > 0 && len(e.Systems) > 0 {
			out = append(out, e)
		}
	}
	return out
}

// needsPlain says whether an entry for image mounts its plain form.
func (p plan) needsPlain(image string) bool {
	for _, e := range p {
		if e.Image == image && (slices.Contains(e.Systems, strataPlain) || slices.Contains(e.Systems, strataPlainRec)) {
			return true
		}
	}
	return false
}

// only keeps the entries for image; "" keeps everything.
func (p plan) only(image string) plan {
	if image == "" {
		return p
	}
	var out plan
	for _, e := range p {
		if e.Image == image {
			out = append(out, e)
		}
	}
	return out
}
