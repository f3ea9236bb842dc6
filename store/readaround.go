package store

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// AdviseReadAround lets the kernel read around the database pages a fault
// brings in, undoing the MADV_RANDOM that bbolt sets on its map. bbolt
// asks for random access because B+tree reads are random in general; here
// a layer's index is written in one transaction with its keys in order, so
// its pages lie together and a directory walk reads them in order. With
// read-around, one fault reads a 128 KiB neighbourhood, not one 4 KiB
// page: a walk of 50,000 files over a cold page cache took some 360 disk
// reads for the index, and now takes a handful.
//
// bbolt maps the file again, advised random, when it outgrows the map;
// callers call this again after large writes.
func (s *Store) AdviseReadAround() error {
	// Inside a read transaction bbolt cannot remap.
	return s.db.View(func(*bolt.Tx) error {
		addr := s.db.Info().Data
		size, err := mappingSize(addr)
		if err != nil {
			return err
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, addr, size, unix.MADV_NORMAL); e != 0 {
			return fmt.Errorf("store: madvise of the database map: %w", e)
		}
		return nil
	})
}

// mappingSize returns the length of this process's memory mapping that
// starts at addr.
func mappingSize(addr uintptr) (uintptr, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "start-end perms offset dev inode path", addresses in hex.
		start, rest, ok := bytes.Cut(sc.Bytes(), []byte("-"))
		if s, err := strconv.ParseUint(string(start), 16, 64); !ok || err != nil || uintptr(s) != addr {
			continue
		}
		end, _, _ := bytes.Cut(rest, []byte(" "))
		e, err := strconv.ParseUint(string(end), 16, 64)
		if err != nil || uintptr(e) <= addr {
			return 0, fmt.Errorf("store: bad line in /proc/self/maps: %q", sc.Text())
		}
		return uintptr(e) - addr, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("store: no mapping at %#x in /proc/self/maps", addr)
}
