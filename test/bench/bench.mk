# Benchmark targets; the top-level Makefile includes this file.
# `make bench QUICK=1` runs the quick subset (< 5 min once images are cached);
# `make bench` runs the full matrix. Both write docs/benchmarks.md; with ROWS,
# docs/benchmarks-ROWS.md.
# ROWS=mount|containerd|buildkit|build|dockerfile|far|gzip|memory runs only that kind of row (for
# development: the report then covers just those), e.g. `make bench QUICK=1
# ROWS=build`. The Dockerfile builds (issue 15: `strata build --push` against
# `buildah bud` + `buildah push`) run only with ROWS=build (beside the build
# steps, whose `buildah from` gives the pull time one of their targets needs,
# and the BuildKit rows, whose BuildKit on stargz-snapshotter is another) or
# ROWS=dockerfile, alone: `make bench` and QUICK leave them out for their
# time budgets (about 110 s a run). QUICK=1 runs each once, the full plan 3 times.
# ROWS=far runs the `go version` and python starts over a far link (100 ms
# RTT), without and with a recorded prefetch list (issue 18); the full plan
# holds them, but `make bench` leaves them out for its time budget.
# ROWS=gzip runs the same starts over wan from the unmodified gzip image,
# from indexes pushed by `strata index` and without, and with SOCI's own
# index (soci-snapshotter through test/bench/soci, which needs cgo and
# zlib1g-dev) (issue 14).
# ROWS=memory runs the daemon-memory row (issue 18): 10 images of 20,000
# small files mounted at once, walked, then read whole; the full plan
# (`make bench`) holds it too, QUICK does not.

# A run of one kind of row writes its own report, so that it never
# replaces the full report with a part of it.
BENCH_OUT := $(if $(ROWS),docs/benchmarks-$(ROWS).md,docs/benchmarks.md)
BENCH_FLAGS := $(if $(QUICK),--quick,) $(if $(ROWS),--rows $(ROWS),) --out $(BENCH_OUT)

.PHONY: bench bench-images bench-report bench-micro bench-tools

bench-tools:
	bash test/install-deps.sh
	@command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
	@command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace
	@command -v buildah >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah
	@command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc
	@mkdir -p bin
	go build -o bin/strata ./cmd/strata
	go build -o bin/bench ./test/bench/cmd/bench
	cd test/bench/stargz && go build -o ../../../bin/stargz-bench .
	@dpkg -s zlib1g-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zlib1g-dev
	cd test/bench/soci && go build -o ../../../bin/soci-bench .
	cd test/buildkit && go build -o ../../bin/ github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl

bench: bench-tools ## benchmark Strata against full pull, stargz-snapshotter, containerd and buildah, write docs/benchmarks.md (QUICK=1: subset; ROWS=build: one kind of row; the Dockerfile builds run only with ROWS=build or dockerfile)
	bin/bench $(BENCH_FLAGS)

bench-images: bench-tools ## build and push the benchmark images once (cached under .bench/)
	bin/bench --images $(BENCH_FLAGS)

bench-report: ## re-render docs/benchmarks.md from the last results in .bench/
	go run ./test/bench/cmd/bench --report

bench-micro: ## Go micro-benchmarks of the hot paths (TOC parse, index lookup, chunk decode, cache-hit read)
	go test -run '^$$' -bench . -benchmem ./fs/index/ ./fs/
