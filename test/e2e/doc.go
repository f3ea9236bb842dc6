// Package e2e holds Strata's end-to-end tests: a real registry
// (distribution's docker-registry, or go-containerregistry's in-process
// one), the counting proxy of test/proxy in front of it, the strata
// daemon, and real FUSE and overlayfs mounts. They run as root.
//
// Its tests may import internal/daemon (to run a daemon in-process),
// internal/kmount and the test infrastructure under test/, and nothing else
// of Strata.
package e2e
