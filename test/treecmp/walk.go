package treecmp

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Record is what Walk sees of one entry.
type Record struct {
	Path      string // slash separated, relative to the root; the root is "."
	Type      string // reg, dir, symlink, char, block, fifo, socket
	Mode      uint32 // permission bits plus setuid, setgid and sticky
	UID, GID  uint32
	Size      int64  // regular files and symlinks; 0 for others (dir sizes are filesystem noise)
	MTime     int64  // nanoseconds since the epoch
	Link      string // symlink target
	RdevMajor uint32 // char and block devices
	RdevMinor uint32
	Xattrs    []Xattr  // sorted by name
	SHA256    string   // hex, regular files only
	Hardlinks []string // sorted paths sharing this inode within the tree; nil when alone
}

// Xattr is one extended attribute; Value holds raw bytes.
type Xattr struct{ Name, Value string }

// ignoredXattr reports attributes that are artifacts of where the tree lives
// rather than of the image: overlayfs's own bookkeeping and SELinux labels.
func ignoredXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || name == "security.selinux"
}

// Walk records every entry under root, root included, sorted by path. It
// reads as root can: trusted.* xattrs need CAP_SYS_ADMIN.
func Walk(root string) ([]Record, error) {
	var recs []Record
	inodes := map[[2]uint64][]int{} // (dev, ino) -> indexes into recs
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rec, st, err := record(p, filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if rec.Type != "dir" {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			inodes[key] = append(inodes[key], len(recs))
		}
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("treecmp: walk %s: %w", root, err)
	}
	for _, idx := range inodes {
		if len(idx) < 2 {
			continue
		}
		group := make([]string, len(idx))
		for i, j := range idx {
			group[i] = recs[j].Path
		}
		sort.Strings(group)
		for _, j := range idx {
			recs[j].Hardlinks = group
		}
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Path < recs[j].Path })
	return recs, nil
}

func record(p, rel string) (Record, *syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return Record{}, nil, fmt.Errorf("lstat %s: %w", p, err)
	}
	r := Record{
		Path:  rel,
		Type:  typeOf(st.Mode),
		Mode:  st.Mode & 0o7777,
		UID:   st.Uid,
		GID:   st.Gid,
		MTime: st.Mtim.Nano(),
	}
	var err error
	switch r.Type {
	case "reg":
		r.Size = st.Size
		r.SHA256, err = digestFile(p)
	case "symlink":
		r.Size = st.Size
		r.Link, err = os.Readlink(p)
	case "char", "block":
		r.RdevMajor, r.RdevMinor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	if err != nil {
		return Record{}, nil, err
	}
	if r.Xattrs, err = xattrs(p); err != nil {
		return Record{}, nil, err
	}
	return r, &st, nil
}

func typeOf(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return "reg"
	case syscall.S_IFDIR:
		return "dir"
	case syscall.S_IFLNK:
		return "symlink"
	case syscall.S_IFCHR:
		return "char"
	case syscall.S_IFBLK:
		return "block"
	case syscall.S_IFIFO:
		return "fifo"
	case syscall.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("unknown(%o)", mode&syscall.S_IFMT)
}

func digestFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// xattrs lists and reads p's attributes without following symlinks.
// Attributes can change size between the two calls, so each read retries a
// bounded number of times on ERANGE.
func xattrs(p string) ([]Xattr, error) {
	names, err := sizedRead(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("llistxattr %s: %w", p, err)
	}
	var out []Xattr
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" || ignoredXattr(name) {
			continue
		}
		v, err := sizedRead(func(b []byte) (int, error) { return unix.Lgetxattr(p, name, b) })
		if errors.Is(err, unix.ENODATA) {
			continue // removed since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %s %s: %w", p, name, err)
		}
		out = append(out, Xattr{Name: name, Value: string(v)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func sizedRead(read func([]byte) (int, error)) ([]byte, error) {
	for range 5 {
		n, err := read(nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]byte, n)
		n, err = read(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, unix.ERANGE
}
