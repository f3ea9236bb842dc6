package run

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestAbandoned: a directory is abandoned when its owner died, or when it
// has none and is old; one being made (no owner yet, just made) is not.
func TestAbandoned(t *testing.T) {
	dir := func(name string) string {
		d := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	making := dir("making")
	if Abandoned(making) {
		t.Error("a directory made a moment ago, its owner not yet marked, is taken for abandoned")
	}
	half := dir("half")
	if err := os.WriteFile(filepath.Join(half, ownerFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if Abandoned(half) {
		t.Error("a directory made a moment ago, its owner file empty, is taken for abandoned")
	}
	past := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(half, past, past); err != nil {
		t.Fatal(err)
	}
	if !Abandoned(half) {
		t.Error("a directory with an empty owner file, made two minutes ago, is not taken for abandoned")
	}
	old := dir("old")
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if !Abandoned(old) {
		t.Error("a directory with no owner, made two minutes ago, is not taken for abandoned")
	}
	mine := dir("mine")
	if err := MarkOwner(mine); err != nil {
		t.Fatal(err)
	}
	if Abandoned(mine) {
		t.Error("the directory of this very process is taken for abandoned")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := dir("dead")
	if err := os.WriteFile(filepath.Join(dead, ownerFile), fmt.Appendf(nil, "%d %d", cmd.Process.Pid, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if !Abandoned(dead) {
		t.Error("the directory of a process that has exited is not taken for abandoned")
	}
}

// TestAbandonedNeverTakesOneInTheMaking: directories made and marked by
// this (live) process while another goroutine judges them, as a build's
// sweep judges a concurrent build's: none is ever taken for abandoned.
func TestAbandonedNeverTakesOneInTheMaking(t *testing.T) {
	base := t.TempDir()
	const n = 1000
	made := make(chan string, n)
	go func() {
		defer close(made)
		for i := range n {
			d := filepath.Join(base, fmt.Sprint(i))
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Error(err)
				return
			}
			made <- d
			if err := MarkOwner(d); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var wrong []string
	for d := range made { // to the end: the maker must finish before the test does
		for range 3 {
			if Abandoned(d) {
				wrong = append(wrong, d)
				break
			}
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d directories made and marked by this live process taken for abandoned, the first %s", len(wrong), wrong[0])
	}
}
