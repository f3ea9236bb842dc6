// Package build runs Dockerfiles on lazy bases: `strata build`. Every FROM
// is resolved by the daemon and mounted lazily only when a step has to run
// in it; each step that changes files is a writable mount of the image so
// far, a command run in it (RUN) or files copied into it (COPY, ADD), and a
// commit kept in the store; the final image is pushed without the base's
// bytes.
//
// The Dockerfile is read by BuildKit's own parser, instructions and shell
// packages, never by hand; .dockerignore by moby/patternmatcher.
//
// It may import every Strata package except cmd and the test infrastructure
// under test/ (it talks to the daemon through internal/daemon's client, and
// links what that links). Its own imports are internal/daemon, internal/run,
// internal/commit and snapshotter (for the layer formats).
package build
