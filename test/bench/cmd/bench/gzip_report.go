package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/stratafs/strata/test/proxy"
)

// renderGzip is issue 14's section: starts from the unmodified gzip
// image, from pushed indexes and without, beside the eStargz mount and
// the full pull.
func renderGzip(w io.Writer, sums map[key]*summary) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	var rows, notes []string
	for _, f := range farWorkloads { // the same starts: go version, python
		get := func(sys string) *summary { return sums[key{"wan", f.img, f.wl, sys, "cold"}] }
		gz, stream, st, fp := get(strataGzip), get(strataGzipStream), get("strata"), get("fullpull")
		if gz == nil && stream == nil {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s |", f.img, f.wl, farCell(gz), farCell(stream), farCell(st), cell(fp, f.wl)))
		if gz != nil && gz.N > 0 && fp != nil && fp.N > 0 {
			notes = append(notes, fmt.Sprintf("- `%s` from the gzip image with its pushed index: %.2f s against the full pull's %.2f s (%.1f× sooner), %.1f MB against %.1f MB.",
				f.wl, gz.Med, fp.Med, fp.Med/gz.Med, float64(gz.Bytes)/1e6, float64(fp.Bytes)/1e6))
		}
	}
	p("## Unmodified gzip images (issue 14)\n\n")
	if len(rows) == 0 {
		p("_Not measured in this run (`make bench ROWS=gzip`)._\n\n")
		return
	}
	p(`The link: **wan** (%d ms RTT, %d Mbit/s). Cold starts only, each from a fresh state root and a dropped page cache.
**%s** mounts the plain gzip image the full pull reads (`+"`IMAGE:gzip`"+`), after one untimed `+"`strata index`"+` on another
daemon pushed its layers' indexes as a referrer: the mount fetches the indexes and each read one span (about 4 MiB of
the tar). **%s** mounts the same image with `+"`layer_indexes = \"off\"`"+`: no index, so the mount reads each layer
whole once and indexes it in the same pass. **strata** mounts the eStargz form. **fullpull** as above. Cells: median
seconds (min–max, n) · mount seconds · MB · requests. SOCI (the AWS snapshotter that does this with its zTOCs) is not
packaged for Debian and is not measured.

| image | workload | %s | %s | strata (eStargz) | fullpull |
|---|---|---|---|---|---|
%s

%s

`, proxy.ProfileWAN.RTT.Milliseconds(), proxy.ProfileWAN.BandwidthBps*8/1_000_000, strataGzip, strataGzipStream,
		strataGzip, strataGzipStream, strings.Join(rows, "\n"), strings.Join(notes, "\n"))
}
