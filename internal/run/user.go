package run

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"
)

// DefaultPath is the container's PATH when the image sets none (Docker's).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// execUser is who the command runs as.
type execUser struct {
	uid, gid  uint32
	groups    []uint32
	home      string // "" when the user has no passwd entry
	superuser bool
}

// resolveUser resolves spec (NAME|UID[:GID|:GROUP]; "" is root) in the
// image's /etc/passwd and /etc/group, read inside the root. A numeric uid
// (and gid) needs no passwd entry; supplementary groups come from
// /etc/group for a user that has an entry.
func resolveUser(r *root, spec string) (execUser, error) {
	passwd, err := readOptional(r, "/etc/passwd")
	if err != nil {
		return execUser{}, err
	}
	group, err := readOptional(r, "/etc/group")
	if err != nil {
		return execUser{}, err
	}
	u, err := user.GetExecUser(spec, &user.ExecUser{Home: ""}, passwd, group)
	switch {
	case errors.Is(err, user.ErrNoPasswdEntries):
		return execUser{}, fmt.Errorf("run: %w: %q in /etc/passwd%s", ErrUserNotFound, userName(spec), missing(passwd))
	case errors.Is(err, user.ErrNoGroupEntries):
		return execUser{}, fmt.Errorf("run: %w: %q in /etc/group%s", ErrGroupNotFound, groupName(spec), missing(group))
	case err != nil:
		return execUser{}, fmt.Errorf("run: user %q: %w", spec, err)
	}
	if u.Uid < 0 || u.Gid < 0 || u.Uid > 1<<32-2 || u.Gid > 1<<32-2 {
		return execUser{}, fmt.Errorf("run: %w: user %q: id out of range", ErrInvalidOptions, spec)
	}
	eu := execUser{uid: uint32(u.Uid), gid: uint32(u.Gid), home: u.Home, superuser: u.Uid == 0}
	// The primary group is a supplementary one too, as containerd's
	// WithAdditionalGIDs and buildah make it: `id` lists it in groups=.
	eu.groups = []uint32{eu.gid}
	for _, g := range u.Sgids {
		if !slices.Contains(eu.groups, uint32(g)) {
			eu.groups = append(eu.groups, uint32(g))
		}
	}
	return eu, nil
}

// readOptional returns the file as a reader, or nil (not a typed nil) when
// the image has no such file.
func readOptional(r *root, p string) (io.Reader, error) {
	b, err := r.readFile(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("run: reading the image's %s: %w", p, err)
	}
	return bytes.NewReader(b), nil
}

func missing(f io.Reader) string {
	if f == nil {
		return " (the image has no such file)"
	}
	return ""
}

func userName(spec string) string {
	name, _, _ := strings.Cut(spec, ":")
	return name
}

func groupName(spec string) string {
	_, group, _ := strings.Cut(spec, ":")
	return group
}

// lookPath finds the command the way runc and crun will (exec.LookPath
// with the container's PATH, in the container), but in the rootfs from
// outside, so a missing command is a clear error before any runtime runs.
// A name with a slash is taken relative to workDir.
func lookPath(r *root, name, pathEnv, workDir string) error {
	if strings.Contains(name, "/") {
		p := name
		if !path.IsAbs(p) {
			p = path.Join(workDir, p)
		}
		if ok, err := isExecutable(r, p); ok || err != nil {
			return err
		}
		return fmt.Errorf("run: %w: %s", ErrCommandNotFound, name)
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if !path.IsAbs(dir) {
			continue // runc and crun skip relative PATH entries too
		}
		if ok, _ := isExecutable(r, path.Join(dir, name)); ok {
			return nil // like exec.LookPath, a non-executable match is skipped
		}
	}
	return fmt.Errorf("run: %w: %q (PATH=%s)", ErrCommandNotFound, name, pathEnv)
}

// isExecutable: a regular file with an execute bit. ok=false, err=nil when
// there is none; err when there is a file that cannot be run.
func isExecutable(r *root, p string) (ok bool, err error) {
	st, err := r.stat(p)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return false, nil
		}
		return false, fmt.Errorf("run: looking up %s: %w", p, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return false, fmt.Errorf("run: %w: %s is a directory", ErrCommandNotExecutable, p)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return false, fmt.Errorf("run: %w: %s is not a regular file", ErrCommandNotExecutable, p)
	case st.Mode&0o111 == 0:
		return false, fmt.Errorf("run: %w: %s is not executable (mode %o)", ErrCommandNotExecutable, p, st.Mode&0o7777)
	}
	return true, nil
}

// LookupUser resolves spec (NAME|UID[:GID|:GROUP]) to numeric ids in the
// image at rootfs, as a run's user is (COPY --chown of a build uses it).
// A user given by name without a group gets the user's primary group.
func LookupUser(rootfs, spec string) (uid, gid uint32, err error) {
	r, err := openRoot(rootfs)
	if err != nil {
		return 0, 0, err
	}
	defer r.close()
	u, err := resolveUser(r, spec)
	if err != nil {
		return 0, 0, err
	}
	return u.uid, u.gid, nil
}
