// Package buildkit is its own module: it pins the BuildKit release whose
// buildkitd and buildctl the end-to-end tests run (test/e2e/buildkit_test.go
// builds them once per machine with `go build` in this directory and keeps
// them in the user's cache directory). `go install` refuses BuildKit's
// module because its go.mod has exclude directives; building its commands
// from a module that requires it works. Being a module of its own keeps
// BuildKit's many dependencies out of Strata's go.mod.
//
// This package is test infrastructure with no code: it must never import
// Strata's packages.
package buildkit
