# Strata — make help lists the targets.
SHELL := /bin/bash
GO ?= go
PKGS := ./...
TEST_TIMEOUT ?= 40m
FUZZTIME ?= 30s
# staticcheck is pinned and run through `go run`, which fetches it from the module proxy the
# first time and caches the binary, so `make lint` needs nothing installed but Go.
STATICCHECK_VERSION ?= v0.8.2
STATICCHECK := $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.DEFAULT_GOAL := help

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages the demo and tests use (fuse3, docker-registry, umoci, skopeo, containerd, runc)
	@bash test/install-deps.sh

build: ## build bin/strata
	$(GO) build -o bin/strata ./cmd/strata

demo: deps ## build an image from this machine's files, mount it lazily, run go from it
	bash test/demo/demo.sh

test: deps lint ## run every test as root: unit, FUSE, overlayfs, registry, containerd (-race)
	@[ "$$(id -u)" = 0 ] || { echo "make test must run as root: it mounts FUSE and overlayfs for real" >&2; exit 1; }
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

lint: ## go vet, gofmt and staticcheck
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz: ## run every fuzz test for FUZZTIME each (default 30s)
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

clean: ## remove build output
	rm -rf bin

include test/bench/bench.mk

.PHONY: help deps build demo test lint fuzz clean
