package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/stratafs/strata/test/proxy"
)

// renderGzip is issue 14's section: starts from the unmodified gzip
// image, from pushed indexes and without, beside SOCI on the same layers
// with its own index, the eStargz mount and the full pull.
func renderGzip(w io.Writer, res *runResults, sums map[key]*summary) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	var rows, notes []string
	// The starts (go version, python), then the walks of whole images.
	walks := []struct{ img, wl string }{{"golang", "find"}, {"golang", "tar"}, {"python", "find"}, {"python", "tar"}}
	for _, f := range append(slices.Clone(farWorkloads), walks...) {
		get := func(sys string) *summary { return sums[key{"wan", f.img, f.wl, sys, "cold"}] }
		gz, rec, stream, sc, zc, st, fp := get(strataGzip), get(strataGzipRec), get(strataGzipStream), get(sociName), get(strataZstdChunked), get("strata"), get("fullpull")
		if gz == nil && rec == nil && stream == nil && sc == nil && zc == nil {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", f.img, f.wl, farCell(gz), farCell(rec), farCell(stream), farCell(sc), farCell(zc), farCell(st), cell(fp, f.wl)))
		if zc != nil && zc.N > 0 && fp != nil && fp.N > 0 {
			notes = append(notes, fmt.Sprintf("- `%s` of %s from the zstd:chunked form: %.2f s against the full pull's %.2f s (%.1f× sooner), %.1f MB.",
				f.wl, f.img, zc.Med, fp.Med, fp.Med/zc.Med, float64(zc.Bytes)/1e6))
		}
		if gz != nil && gz.N > 0 && fp != nil && fp.N > 0 {
			notes = append(notes, fmt.Sprintf("- `%s` from the gzip image with its pushed index: %.2f s against the full pull's %.2f s (%.1f× sooner), %.1f MB against %.1f MB.",
				f.wl, gz.Med, fp.Med, fp.Med/gz.Med, float64(gz.Bytes)/1e6, float64(fp.Bytes)/1e6))
		}
		if rec != nil && rec.N > 0 && fp != nil && fp.N > 0 {
			notes = append(notes, fmt.Sprintf("- `%s` from the gzip image with its pushed index and a recorded prefetch list: %.2f s (%.1f× sooner than the full pull), %.1f MB.",
				f.wl, rec.Med, fp.Med/rec.Med, float64(rec.Bytes)/1e6))
		}
		if gz != nil && gz.N > 0 && sc != nil && sc.N > 0 {
			notes = append(notes, fmt.Sprintf("- `%s` with Strata's index: %.2f s, %.1f MB, %d requests; with SOCI's: %.2f s, %.1f MB, %d requests (Strata %.2f× SOCI's time).",
				f.wl, gz.Med, float64(gz.Bytes)/1e6, gz.Requests, sc.Med, float64(sc.Bytes)/1e6, sc.Requests, gz.Med/sc.Med))
		}
	}
	p("## Unmodified gzip images (issue 14)\n\n")
	if len(rows) == 0 {
		p("_Not measured in this run (`make bench ROWS=gzip`)._\n\n")
		return
	}
	p(`The link: **wan** (%d ms RTT, %d Mbit/s). Cold starts only, each from a fresh state root and a dropped page cache.
**%s** mounts the plain gzip image the full pull reads (`+"`IMAGE:gzip`"+`), after one untimed `+"`strata index --prioritize LIST`"+`
on another daemon pushed its layers' indexes and a prefetch list as referrers, LIST being the files the image's start reads
(the list its eStargz form was converted with: `+"`go version`"+`'s for golang, `+"`python`"+`'s for python): the indexes hold a
checkpoint at the block boundary before each listed file, the mount fetches the indexes and then the listed files from
those checkpoints, in parallel, while the workload starts; a read of another file fetches the start of its span (up to
1 MiB of the tar) up to where the file ends in it, and a second read into a span the rest of it. **%s** is a copy of the
image (`+"`IMAGE-rec-WORKLOAD:gzip`"+`) indexed without a list (checkpoints every 1 MiB of the tar only) that carries a
prefetch list recorded by one untimed run of the workload (`+"`strata mount --record --record-push`"+`): the mount
fetches the listed files' spans, from their checkpoints up to where the files end, in parallel, while the workload starts. **%s** mounts the same image with `+"`layer_indexes = \"off\"`"+`: no index, so the mount reads each layer
whole once and indexes it in the same pass. **%s** is AWS's soci-snapshotter (%s, the Go module used as a library
by `+"`test/bench/soci`"+`), the baseline that does this with its own index: one untimed `+"`soci convert`"+` (its `+"`soci`"+`
package, default 4 MiB spans, zTOCs for layers of 10 MiB or more) pushed `+"`IMAGE:%s`"+`, the same gzip layers with an
image index binding a SOCI index v2 to the manifest; the mount plays containerd's part against soci's own snapshotter
(default config, background fetch on, no prometheus): it fetches the SOCI index and the zTOCs, mounts each layer with a
zTOC as its own FUSE mount under overlayfs, and each read fetches a span. **%s** mounts the image's
zstd:chunked form (`+"`IMAGE:zstdchunked`"+`: its gzip layers rewritten with stargz-snapshotter's
`+"`estargz/zstdchunked`"+` at zstd's default level, as containers/storage writes them, no prefetch landmark): each
read fetches its chunks, verified against the TOC. **strata** mounts the eStargz form (with the start's prefetch
landmark). **fullpull** as above. The `+"`find`"+` and `+"`tar`"+` rows walk the whole image after the mount (`+"`tar`"+`
reads every file), 2 runs each. Cells: median seconds (min–max, n) · mount seconds · MB · requests.

| image | workload | %s | %s | %s | %s | %s | strata (eStargz) | fullpull |
|---|---|---|---|---|---|---|---|---|
%s

%s

| target | measured | verdict |
|---|---|---|
`, proxy.ProfileWAN.RTT.Milliseconds(), proxy.ProfileWAN.BandwidthBps*8/1_000_000, strataGzip, strataGzipRec, strataGzipStream,
		sociName, sociVersion(res), sociTag, strataZstdChunked, strataGzip, strataGzipRec, strataGzipStream, sociName, strataZstdChunked,
		strings.Join(rows, "\n"), strings.Join(notes, "\n"))
	for _, t := range gzipTargets(res, sums) {
		p("| %s | %s | %s |\n", t.What, t.Measured, verdict(t))
	}
	p("\n")
}

// gzipTargets are issue 14's targets over wan, cold, and its local ones.
func gzipTargets(res *runResults, sums map[key]*summary) []target {
	var ts []target
	for _, f := range farWorkloads {
		get := func(sys string) *summary {
			if s := sums[key{"wan", f.img, f.wl, sys, "cold"}]; s != nil && s.N > 0 {
				return s
			}
			return nil
		}
		gz, stream, sc, fp := get(strataGzip), get(strataGzipStream), get(sociName), get("fullpull")
		t := target{What: fmt.Sprintf("wan cold: `%s` from the gzip image with an index ≥ 10× sooner than full pull + unpack (issue 14)", f.wl)}
		if gz != nil && fp != nil {
			t.Measured = fmt.Sprintf("%.2f s vs %.2f s (%.1f×)", gz.Med, fp.Med, fp.Med/gz.Med)
			t.Met = check(fp.Med >= 10*gz.Med)
		}
		u := target{What: fmt.Sprintf("wan cold: `%s` from the gzip image without an index no slower than full pull + unpack (issue 14)", f.wl)}
		if stream != nil && fp != nil {
			u.Measured = fmt.Sprintf("%.2f s vs %.2f s", stream.Med, fp.Med)
			u.Met = check(stream.Med <= fp.Med)
		}
		v := target{What: fmt.Sprintf("wan cold: `%s` from the gzip image with an index sooner than SOCI (issue 14)", f.wl)}
		if gz != nil && sc != nil {
			v.Measured = fmt.Sprintf("%.2f s vs %.2f s (%.2f×), %.1f vs %.1f MB", gz.Med, sc.Med, gz.Med/sc.Med, float64(gz.Bytes)/1e6, float64(sc.Bytes)/1e6)
			v.Met = check(gz.Med < sc.Med)
		}
		ts = append(ts, t, u, v)
	}
	for _, img := range []string{"golang", "python"} {
		g, ok := res.GzipIndexing[img]
		if !ok || g.LayerBytes == 0 || g.IndexSecs == 0 {
			continue
		}
		rate := func(secs float64) float64 { return float64(g.TarBytes) / 1e6 / secs }
		ts = append(ts,
			target{What: "building the index of " + img + "'s gzip layers from local blobs ≥ 80% of compress/gzip's throughput (issue 14)",
				Measured: fmt.Sprintf("`strata index` from a local registry %.0f vs compress/gzip from memory %.0f MB/s of tar (%.0f%%; %.1f MB compressed)", rate(g.IndexSecs), rate(g.GunzipSecs),
					100*g.GunzipSecs/g.IndexSecs, float64(g.LayerBytes)/1e6),
				Met: check(g.IndexSecs <= g.GunzipSecs/0.8)},
			target{What: "index of " + img + "'s gzip layers ≤ 2% of the compressed layers (issue 14)",
				Measured: fmt.Sprintf("%.2f MB for %.1f MB (%.2f%%)", float64(g.PortableSize)/1e6, float64(g.LayerBytes)/1e6,
					100*float64(g.PortableSize)/float64(g.LayerBytes)),
				Met: check(float64(g.PortableSize) <= 0.02*float64(g.LayerBytes))})
	}
	return ts
}

// sociVersion is soci-snapshotter's version as the run recorded it.
func sociVersion(res *runResults) string {
	if v := strings.TrimSpace(res.Machine.Soci); v != "" && v != "unknown" {
		return v
	}
	return "version not recorded"
}
