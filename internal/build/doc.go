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
// It may import internal/daemon (the client and its API types), internal/run
// and internal/commit, and nothing else of Strata: never fs, snapshotter,
// store, remote or FUSE.
package build
