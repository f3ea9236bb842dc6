package build

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// unixMode turns an os.FileMode into chmod(2)'s bits, taking the special
// bits either as os.ModeSetuid and friends or as the raw octal 0o7000 that
// a parsed "--chmod=4755" gives.
func unixMode(m os.FileMode) uint32 {
	bits := uint32(m.Perm()) | uint32(m)&0o7000
	if m&os.ModeSetuid != 0 {
		bits |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		bits |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		bits |= unix.S_ISVTX
	}
	return bits
}

// fileMode is the os.FileMode of chmod(2)'s bits and the type of a
// stat(2) mode: what a symbolic mode applies to ("X" looks at the type).
func fileMode(st uint32) os.FileMode {
	m := os.FileMode(st & 0o777)
	if st&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if st&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if st&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	if st&unix.S_IFMT == unix.S_IFDIR {
		m |= os.ModeDir
	}
	return m
}

// tarTimespec is t as utimensat(2) takes it.
func tarTimespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// entryMeta is what an entry written gets besides its content.
type entryMeta struct {
	uid, gid int
	mode     uint32 // permission bits with setuid, setgid and sticky; not for symlinks
	mtime    unix.Timespec
	xattrs   []xattr
}

type xattr struct {
	name  string
	value []byte
}

// applyFd gives open file or directory fd the owner, mode and extended
// attributes; chown first, as it clears setuid and capabilities.
func (m entryMeta) applyFd(fd int) error {
	if err := unix.Fchown(fd, m.uid, m.gid); err != nil {
		return os.NewSyscallError("fchown", err)
	}
	if err := unix.Fchmod(fd, m.mode); err != nil {
		return os.NewSyscallError("fchmod", err)
	}
	for _, x := range m.xattrs {
		err := unix.Fsetxattr(fd, x.name, x.value, 0)
		if err != nil && err != unix.ENOTSUP && err != unix.EPERM {
			return fmt.Errorf("setxattr %s: %w", x.name, err)
		}
	}
	return nil
}

// applyAt gives name in dir m's owner, mode (but to a symlink) and time.
func (m entryMeta) applyAt(dir int, name string) error {
	if err := unix.Fchownat(dir, name, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lchown", Path: name, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lstat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(dir, name, m.mode, 0); err != nil {
			return &os.PathError{Op: "chmod", Path: name, Err: err}
		}
	}
	return setTimes(dir, name, m.mtime)
}

// setTimes sets name's access and modification times (never a symlink's
// target's).
func setTimes(dir int, name string, mtime unix.Timespec) error {
	if err := unix.UtimesNanoAt(dir, name, []unix.Timespec{mtime, mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: name, Err: err}
	}
	return nil
}

// removeNonDir makes room for a new entry name in dir: it removes a file,
// symlink or node there, and refuses to replace a directory.
func removeNonDir(dir int, name string) error {
	var st unix.Stat_t
	err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return &os.PathError{Op: "lstat", Path: name, Err: err}
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return &os.PathError{Op: "cannot replace a directory with a non-directory", Path: name, Err: unix.EISDIR}
	}
	if err := unix.Unlinkat(dir, name, 0); err != nil {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}

// writeRegular writes r's bytes as regular file name in dir, with m.
func writeRegular(dir int, name string, r io.Reader, m entryMeta) error {
	if err := removeNonDir(dir, name); err != nil {
		return err
	}
	fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = io.Copy(f, r)
	if err == nil {
		err = m.applyFd(fd)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = setTimes(dir, name, m.mtime)
	}
	return err
}

// writeSymlink makes name in dir a symlink to target, with m's owner and
// time.
func writeSymlink(dir int, name, target string, m entryMeta) error {
	if err := removeNonDir(dir, name); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, dir, name); err != nil {
		return &os.PathError{Op: "symlink", Path: name, Err: err}
	}
	if err := unix.Fchownat(dir, name, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lchown", Path: name, Err: err}
	}
	return setTimes(dir, name, m.mtime)
}

// writeNode makes name in dir a fifo or device of type typ (S_IFIFO,
// S_IFCHR, S_IFBLK), with m; devices need root.
func writeNode(dir int, name string, typ uint32, rdev int, m entryMeta) error {
	if err := removeNonDir(dir, name); err != nil {
		return err
	}
	if err := unix.Mknodat(dir, name, typ|m.mode&0o777, rdev); err != nil {
		return &os.PathError{Op: "mknod", Path: name, Err: err}
	}
	if err := unix.Fchownat(dir, name, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "chown", Path: name, Err: err}
	}
	// Just made by mknod, name is no symlink for fchmodat to follow.
	if err := unix.Fchmodat(dir, name, m.mode, 0); err != nil {
		return &os.PathError{Op: "chmod", Path: name, Err: err}
	}
	return setTimes(dir, name, m.mtime)
}

// keepXattr says whether extended attribute name is copied: file
// capabilities and user attributes; never the security labels or ACLs of
// the host.
func keepXattr(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "user.")
}

// readXattrs returns the extended attributes of fd that keepXattr keeps,
// in name order; none when the file system has none.
func readXattrs(fd int) ([]xattr, error) {
	size, err := unix.Flistxattr(fd, nil)
	if err == unix.ENOTSUP || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, os.NewSyscallError("flistxattr", err)
	}
	buf := make([]byte, size)
	if size, err = unix.Flistxattr(fd, buf); err != nil {
		return nil, os.NewSyscallError("flistxattr", err)
	}
	var out []xattr
	for name := range strings.SplitSeq(string(buf[:size]), "\x00") {
		if !keepXattr(name) {
			continue
		}
		value, err := getXattr(fd, name)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		out = append(out, xattr{name: name, value: value})
	}
	slices.SortFunc(out, func(a, b xattr) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

func getXattr(fd int, name string) ([]byte, error) {
	for {
		size, err := unix.Fgetxattr(fd, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		n, err := unix.Fgetxattr(fd, name, buf)
		if err == unix.ERANGE {
			continue // it grew in between
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
