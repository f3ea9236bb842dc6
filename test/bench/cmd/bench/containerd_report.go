package main

import (
	"fmt"
	"io"
	"strings"
)

// renderContainerd writes the containerd comparison: its method, one table
// per profile and the targets for it.
func renderContainerd(w io.Writer, res *runResults, sums map[key]*summary) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("## containerd comparison (issue 4)\n\n")
	rows := ctdRows(sums)
	if len(rows) == 0 {
		p("_Not measured in this run._\n\n")
		return
	}
	version := ctdServerVersion(res.Containerd)
	p(`Each cold run starts a private %s (CRI off) with a fresh snapshotter, all their state on a tmpfs mounted at
`+"`.bench/run/ctd`"+` for the run (removing an unpacked image from ext4 took longer than pulling it), drops the page cache, then times **pull start → `+"`ctr run --rm IMAGE ID CMD`"+` has exited**. The registry is reached only
through `+"`test/proxy`"+` with the row's profile, by containerd and by the snapshotters alike.

- **overlayfs**: containerd's built-in snapshotter; `+"`ctr image pull --plain-http`"+` of the gzip image (download + unpack), then `+"`ctr run`"+`.
- **strata**: `+"`strata daemon`"+` (fresh root) as proxy plugin `+"`strata`"+`; `+"`strata pull --snapshotter strata`"+` of the eStargz image, then `+"`ctr run --snapshotter strata`"+`.
- **stargz**: stargz-snapshotter v0.19 `+"`service.NewStargzSnapshotterService`"+` (default config, background fetch on) served through
  containerd's `+"`contrib/snapshotservice`"+` by `+"`stargz-bench --snapshotter-socket`"+`, proxy plugin `+"`stargz`"+`; `+"`strata pull --snapshotter stargz`"+`
  of the eStargz image, then `+"`ctr run --snapshotter stargz`"+`. `+"`strata pull`"+` sets CRI's remote-snapshot labels
  (`+"`cri.image-ref`, `cri.layer-digest`, `cri.image-layers`"+`, plus the TOC-digest annotations), which stargz-snapshotter reads
  (`+"`service/cri.go`"+`) as it does the `+"`remote/stargz.*`"+` ones its `+"`rpull`"+` sets; the prefetch-size label is left at its default.
- Both lazy systems are checked after each run: every layer snapshot must carry the snapshotter's remote label, or the run fails.
- Cells: median seconds to the command's result (min–max, n runs) · median of the pull's share · MB and requests through the proxy.

| profile | image | command | overlayfs (full pull) | strata | stargz | strata/overlayfs | strata/stargz |
|---|---|---|---|---|---|---:|---:|
%s

`, version, strings.Join(rows, "\n"))
	p("| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range ctdTargets(sums) {
		p("| %s | %s | %s |\n", t.What, t.Measured, verdict(t))
	}
	p("\n")
}

// ctdServerVersion picks the server's version out of `ctr version`.
func ctdServerVersion(out string) string {
	_, server, ok := strings.Cut(out, "Server:")
	if !ok {
		return "containerd"
	}
	for _, line := range strings.Split(server, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return "containerd " + strings.TrimSpace(v)
		}
	}
	return "containerd"
}

// ctdCommand is the workload's command as `ctr run` gets it.
func ctdCommand(wl string) string {
	w, ok := workloadByName(wl)
	if !ok {
		return wl
	}
	return "`" + strings.Join(w.Chroot, " ") + "`"
}

func ctdRows(sums map[key]*summary) []string {
	var rows []string
	for _, prof := range profileOrder {
		for _, img := range images {
			for _, wl := range workloads {
				if len(wl.Chroot) == 0 { // the "mount" rows summarize derives from every cold run
					continue
				}
				get := func(sys string) *summary { return sums[key{prof, img.Name, wl.Name, sys, "cold"}] }
				ov, st, sg := get(ctdOverlay), get(ctdStrata), get(ctdStargz)
				if ov == nil && st == nil && sg == nil {
					continue
				}
				pull := func(sys string) string {
					s := sums[key{prof, img.Name, "mount", sys, "cold"}]
					if s == nil || s.N == 0 {
						return ""
					}
					return fmt.Sprintf(" · pull %.2f s", s.Med)
				}
				rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s |", prof, img.Name, ctdCommand(wl.Name),
					cell(ov, wl.Name)+pull(ctdOverlay), cell(st, wl.Name)+pull(ctdStrata), cell(sg, wl.Name)+pull(ctdStargz),
					ratio(st, ov), ratio(st, sg)))
			}
		}
	}
	return rows
}

// ctdTargets: over wan, the command's first result ≥ 5× sooner than with
// a full pull into overlayfs, and sooner than with stargz-snapshotter.
func ctdTargets(sums map[key]*summary) []target {
	var ts []target
	for _, img := range images {
		for _, wl := range workloads {
			if len(wl.Chroot) == 0 {
				continue
			}
			get := func(sys string) *summary {
				s := sums[key{"wan", img.Name, wl.Name, sys, "cold"}]
				if s == nil || s.N == 0 {
					return nil
				}
				return s
			}
			ov, st, sg := get(ctdOverlay), get(ctdStrata), get(ctdStargz)
			if ov == nil && st == nil && sg == nil {
				continue
			}
			what := "wan cold, " + img.Name + ": `ctr run` result "
			t := target{What: what + "≥ 5× sooner than overlayfs full pull"}
			if st != nil && ov != nil {
				t.Measured = fmt.Sprintf("%.2f s vs %.2f s (%.1f×)", st.Med, ov.Med, ov.Med/st.Med)
				t.Met = check(ov.Med >= 5*st.Med)
			}
			ts = append(ts, t)
			t = target{What: what + "sooner than stargz-snapshotter"}
			if st != nil && sg != nil {
				t.Measured = fmt.Sprintf("%.2f s vs %.2f s", st.Med, sg.Med)
				t.Met = check(st.Med < sg.Med)
			}
			ts = append(ts, t)
		}
	}
	return ts
}
