// Package importrules keeps the import rules of Strata's packages true. Each
// package's doc.go says what it may import and what it must never import;
// this package's test holds the same rules as a table and checks them
// against `go list -deps`, so a change that breaks one fails `make test`
// naming the package, the import and the sentence of the doc it breaks.
//
// What is checked:
//   - every package of the module has a doc.go whose package comment states
//     its rule word for word as the table does, so a new package cannot
//     skip it and a doc cannot drift from the check;
//   - what a package links when another imports it (its imports and theirs,
//     transitively) obeys its rule;
//   - its tests' direct imports obey the same rule, except that tests may
//     also import the test infrastructure under test/;
//   - who may import internal/daemon;
//   - test/bench/stargz, its own module, requires no Strata module.
//
// It imports nothing but the standard library; its test runs `go list`.
package importrules
