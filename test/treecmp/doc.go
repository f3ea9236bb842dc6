// Package treecmp records a directory tree as comparable data and reports
// the differences between two trees. End-to-end tests use it to prove that a
// Strata mount shows exactly what a reference unpacker produces from the
// same image: ReferenceUnpack unpacks with skopeo and umoci, tools that
// share no code with Strata's lazy path.
//
// A Record holds everything a container can observe about an entry: type,
// mode with special bits, owner, size, nanosecond mtime, link target,
// device numbers, xattrs of every namespace (except the ones an overlay
// mount or SELinux add on their own), a content digest, and the hardlink
// group. Walk never follows symlinks.
//
// What umoci 0.4.7 (Debian bookworm) does differently from plain tar
// semantics, measured by this package's tests, is written next to
// ReferenceUnpack: read it before trusting a field in a comparison.
//
// This package is test infrastructure. It must never import Strata's own
// packages (remote, store, fs, snapshotter, internal, cmd).
package treecmp
