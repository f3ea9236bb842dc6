// Package e2e holds Strata's end-to-end tests: a real registry
// (distribution's docker-registry, or go-containerregistry's in-process
// one), the counting proxy of test/proxy in front of it, the strata
// daemon, and real FUSE and overlayfs mounts. They run as root.
package e2e
