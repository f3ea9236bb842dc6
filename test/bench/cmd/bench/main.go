package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/registry"
)

type options struct {
	quick               bool
	work, out, results  string
	strata, stargz      string
	soci                string
	buildkitd, buildctl string
	imagesOnly          bool
	reportOnly          bool
	only                string
	rows                string
	workloads, systems  string
	runs                int
}

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "run the QUICK subset (3 runs, wan for the start-up workloads, lo for throughput)")
	flag.StringVar(&o.work, "work", ".bench", "cache and scratch directory (images and registry storage are kept)")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "report to write")
	flag.StringVar(&o.strata, "strata", "bin/strata", "strata binary")
	flag.StringVar(&o.stargz, "stargz", "bin/stargz-bench", "stargz-bench binary (test/bench/stargz)")
	flag.StringVar(&o.soci, "soci", "bin/soci-bench", "soci-bench binary (test/bench/soci), for the gzip rows")
	flag.StringVar(&o.buildkitd, "buildkitd", "bin/buildkitd", "buildkitd binary (test/buildkit), for the BuildKit rows")
	flag.StringVar(&o.buildctl, "buildctl", "bin/buildctl", "buildctl binary (test/buildkit), for the BuildKit rows")
	flag.BoolVar(&o.imagesOnly, "images", false, "only build and push the images")
	flag.BoolVar(&o.reportOnly, "report", false, "only render the report from the last results")
	flag.StringVar(&o.only, "only", "", "run only the plan entries for this image (for development; the report then covers just those)")
	flag.StringVar(&o.rows, "rows", "all", "run only the plan entries of this kind: "+strings.Join(rowKinds, ", ")+
		" (for development; the report then covers just those). all leaves out the Dockerfile builds (issue 15), for the time budget; build runs them with the build steps")
	flag.StringVar(&o.workloads, "workloads", "", "comma-separated workloads, build steps or Dockerfiles to keep (for development)")
	flag.StringVar(&o.systems, "systems", "", "comma-separated systems to keep, e.g. bld-strata (for development)")
	flag.IntVar(&o.runs, "runs", 0, "runs of every kept entry, when > 0 (for development)")
	flag.Parse()
	if !slices.Contains(rowKinds, o.rows) {
		fmt.Fprintf(os.Stderr, "--rows: %q is not one of %s\n", o.rows, strings.Join(rowKinds, ", "))
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run0(ctx, o, log); err != nil {
		log.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

func run0(ctx context.Context, o options, log *slog.Logger) error {
	for _, p := range []*string{&o.work, &o.strata, &o.stargz, &o.soci, &o.out} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	o.results = filepath.Join(o.work, "results.json")
	if o.reportOnly {
		return renderFromFile(o)
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (FUSE mounts, chroot, drop_caches)")
	}
	reg, err := registry.New(ctx, filepath.Join(o.work, "registry"))
	if err != nil {
		return err
	}
	defer reg.Close()
	b := &builder{ctx: ctx, Dir: filepath.Join(o.work, "images"), Strata: o.strata, log: log}
	p := planFor(o.quick).only(o.only).rows(o.rows).pick(splitList(o.workloads), splitList(o.systems), o.runs)
	start := time.Now()
	for _, name := range p.images() {
		spec, _ := imageByName(name)
		if err := b.ensureImage(ctx, reg.Host(), spec); err != nil {
			return err
		}
		if p.needsPlain(name) {
			if err := b.ensurePlain(ctx, reg.Host(), spec); err != nil {
				return err
			}
		}
		if p.needsSystem(name, strataZstdChunked) {
			if err := b.ensureZstdChunked(ctx, reg.Host(), spec); err != nil {
				return err
			}
		}
	}
	log.Info("images ready", "took", time.Since(start).Round(time.Second))
	if o.imagesOnly {
		return nil
	}
	px, err := proxy.New(reg.URL())
	if err != nil {
		return err
	}
	defer px.Close()
	r := &runner{o: o, px: px, log: log}
	res, err := r.runPlan(ctx, p, reg.Host())
	if err != nil {
		return err
	}
	res.Elapsed = time.Since(start).Seconds()
	res.Quick, res.Rows = o.quick, o.rows
	if err := writeJSON(o.results, res); err != nil {
		return err
	}
	return renderFromFile(o)
}

// splitList splits a comma-separated flag value; "" is an empty list.
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func renderFromFile(o options) error {
	b, err := os.ReadFile(o.results)
	if err != nil {
		return fmt.Errorf("no results yet (run the benchmark first): %w", err)
	}
	var res runResults
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", o.results, err)
	}
	f, err := os.Create(o.out)
	if err != nil {
		return err
	}
	if err := renderReport(f, &res); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
