// Package proc starts the child processes of tests and benchmarks
// (registries, containerd, strata daemons, buildkitd) so that they die
// with the test process and never before it.
//
// A child gets SIGKILL when its parent dies (Pdeathsig), so that a
// crashed test leaves no registry or daemon behind. But Linux sends that
// signal when the *thread* that forked the child exits, not the process,
// and the Go runtime ends a thread when a goroutine that locked it exits:
// a child forked from a thread that another goroutine locks later (as
// starting a second registry does) is killed in the middle of a test,
// leaving its FUSE mounts dead. Start forks from a goroutine locked to a
// thread of its own, which lives until the child is reaped.
//
// This package is test infrastructure. It must never import Strata's own
// packages (remote, store, fs, snapshotter, internal, cmd).
package proc
