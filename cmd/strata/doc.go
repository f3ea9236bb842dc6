// Command strata mounts OCI images without pulling them first.
//
// It may import every Strata package except the test infrastructure under
// test/; being a command, nothing imports it.
package main
