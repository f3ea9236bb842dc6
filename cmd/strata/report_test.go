package main

import (
	"strings"
	"testing"
)

// TestReporter: on a terminal, updates of one operation share a line;
// reports and warnings keep theirs, and the last line is ended, so that
// what follows (the result, an error) starts a line of its own.
func TestReporter(t *testing.T) {
	var b strings.Builder
	report, end := reporter(&b, true)
	for _, l := range []string{
		"writing the new layer (estargz) from 3 changes",
		"pushing to r/app: 1MiB of 2MiB in place",
		"pushing to r/app: 2MiB of 2MiB in place",
		"warning: one",
		"warning: two",
		"base layers streamed from a to b: 2MiB (the registries differ)",
	} {
		report(l)
	}
	end()
	want := "writing the new layer (estargz) from 3 changes\n" +
		"pushing to r/app: 1MiB of 2MiB in place\r\033[Kpushing to r/app: 2MiB of 2MiB in place\n" +
		"warning: one\nwarning: two\n" +
		"base layers streamed from a to b: 2MiB (the registries differ)\n"
	if b.String() != want {
		t.Errorf("terminal output %q, want %q", b.String(), want)
	}

	b.Reset()
	report, end = reporter(&b, false)
	report("a: 1")
	report("a: 2")
	end()
	if b.String() != "a: 1\na: 2\n" {
		t.Errorf("plain output %q", b.String())
	}
}
