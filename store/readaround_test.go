package store

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// vmFlags returns the VmFlags line of the mapping at addr in
// /proc/self/smaps ("rr" is random-read advice).
func vmFlags(t *testing.T, addr uintptr) string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	prefix := fmt.Sprintf("%x-", addr)
	sc := bufio.NewScanner(f)
	found := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			found = true
		} else if found && strings.HasPrefix(line, "VmFlags:") {
			return line
		}
	}
	t.Fatalf("no mapping at %#x in /proc/self/smaps", addr)
	return ""
}

func TestDatabaseMapReadsAround(t *testing.T) {
	s := openTest(t, Options{})
	var addr uintptr
	s.db.View(func(*bolt.Tx) error { addr = s.db.Info().Data; return nil })
	flags := vmFlags(t, addr)
	if strings.Contains(flags, " rr") {
		t.Fatalf("database map still advised random: %s", flags)
	}
	if n, err := mappingSize(addr); err != nil || n != initialMmapSize {
		t.Fatalf("mappingSize = %d, %v; want %d", n, err, initialMmapSize)
	}
	// Advising again (after each index save) is harmless.
	if err := s.AdviseReadAround(); err != nil {
		t.Fatal(err)
	}
}
