package run

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// root is a directory that paths are resolved in as if it were "/": every
// open goes through openat2 with RESOLVE_IN_ROOT, so ".." and absolute
// symlinks stop at the root, as they do for the container itself. A hostile
// image cannot make Run read or write a host file.
type root struct {
	fd   int
	path string
}

// resolveInRoot: symlinks resolve inside the root; /proc magic links are
// refused (a rootfs has no business pointing into our own fds).
const resolveInRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

func openRoot(dir string) (*root, error) {
	if dir == "" {
		return nil, fmt.Errorf("run: %w: no rootfs", ErrInvalidOptions)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("run: rootfs %s: %w", dir, err)
	}
	return &root{fd: fd, path: dir}, nil
}

func (r *root) close() { unix.Close(r.fd) }

// openFD opens p (absolute or relative to the root; symlinks followed
// inside the root unless flags has O_NOFOLLOW).
func (r *root) openFD(p string, flags int, mode uint32) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: resolveInRoot}
	for {
		fd, err := unix.Openat2(r.fd, rel(p), &how)
		if err == unix.EINTR || err == unix.EAGAIN { // EAGAIN: a rename raced the lookup
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: p, Err: err}
		}
		return fd, nil
	}
}

// stat follows symlinks (inside the root).
func (r *root) stat(p string) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := r.openFD(p, unix.O_PATH, 0)
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return st, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	return st, nil
}

// lstat does not follow a symlink in p's last element.
func (r *root) lstat(p string) (unix.Stat_t, error) {
	var st unix.Stat_t
	dir, name := path.Split(path.Clean("/" + p))
	if name == "" {
		return st, unix.Fstat(r.fd, &st)
	}
	pfd, err := r.openFD(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return st, err
	}
	defer unix.Close(pfd)
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	return st, nil
}

func (r *root) readlink(p string) (string, error) {
	dir, name := path.Split(path.Clean("/" + p))
	pfd, err := r.openFD(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(pfd)
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(pfd, name, buf)
	if err != nil {
		return "", &os.PathError{Op: "readlink", Path: p, Err: err}
	}
	return string(buf[:n]), nil
}

// maxConfigFile bounds what readFile reads: /etc/passwd of a real image is
// kilobytes; a hostile one must not make Run read gigabytes.
const maxConfigFile = 8 << 20

// readFile reads the regular file p. O_NONBLOCK keeps a FIFO planted as
// /etc/passwd from blocking the open.
func (r *root) readFile(p string) ([]byte, error) {
	fd, err := r.openFD(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path.Join(r.path, p))
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &os.PathError{Op: "read", Path: p, Err: errors.New("not a regular file")}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err == nil && len(b) > maxConfigFile {
		err = &os.PathError{Op: "read", Path: p, Err: errors.New("file too large")}
	}
	return b, err
}

// rel makes p relative for openat2 (an absolute path is resolved from the
// root under RESOLVE_IN_ROOT too, but "." is clearer for the root itself).
func rel(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}
