// Package registry starts real OCI registries on 127.0.0.1 for tests:
//
//   - Start runs the Debian docker-registry binary (CNCF distribution 2.8,
//     /usr/bin/docker-registry) as a child process with its own filesystem
//     storage under a temp dir, the registry most production pushes and
//     pulls are shaped by;
//   - StartInProcess serves go-containerregistry's pkg/registry from an
//     httptest server, fast and dependency free.
//
// Both return the same *Registry, so a test can run against either with a
// table of starters. New and Close are the non-testing form of Start, for
// benchmark harnesses that manage lifetimes themselves.
//
// Neither has TLS: they listen on loopback only, and ggcr, skopeo and
// Strata all speak plain HTTP to 127.0.0.1. StartWithAuth runs the
// docker-registry with htpasswd basic auth, as a private registry: every
// request without its user's credentials gets 401 and a challenge.
//
// This package is test infrastructure. It must never import Strata's own
// packages (remote, store, fs, snapshotter, internal, cmd).
package registry
