package snapshotter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ChangeKind says how an entry differs from the lower layers.
type ChangeKind int

// The kinds of change, printed as `docker diff` prints them.
const (
	ChangeAdd    ChangeKind = iota // A: not in the lower layers
	ChangeModify                   // C: in the lower layers, changed or replaced
	ChangeDelete                   // D: in the lower layers, deleted
)

func (k ChangeKind) String() string {
	switch k {
	case ChangeAdd:
		return "A"
	case ChangeModify:
		return "C"
	case ChangeDelete:
		return "D"
	}
	return fmt.Sprintf("ChangeKind(%d)", int(k))
}

// Change is one entry of an upper directory that differs from the lower
// layers.
type Change struct {
	Kind ChangeKind
	// Path is the entry's path in the image, absolute ("/etc/passwd").
	Path string
	// Info describes the entry in the upper directory; nil for deletions.
	Info iofs.FileInfo
	// Opaque is set for a directory that hides everything the lower layers
	// have beneath it (overlayfs' trusted.overlay.opaque=y).
	Opaque bool
}

// opaqueXattr marks an upper directory whose lower counterparts are hidden.
const opaqueXattr = "trusted.overlay.opaque"

// UpperChanges reports the changes recorded in upper, the upper directory of
// an overlay, against lower, the merged lower layers of that overlay mounted
// read-only somewhere (a View of the active snapshot's parent). It walks
// upper only — lower is looked up by path, never walked — which is correct
// because the snapshots of writable mounts keep redirect_dir and metacopy
// off (WithWholeUpper): whatever changed is in upper whole.
//
// fn is called in lexical path order, parents before children:
//   - a whiteout (a 0/0 character device) is a deletion, when lower has
//     the path;
//   - a directory present in lower with the same mode, owner, mtime and
//     extended attributes is left out (it is in upper only because
//     something beneath it changed), but its children are reported;
//   - an opaque directory is reported with Opaque set, and everything
//     beneath it is an addition;
//   - anything else is a modification when lower has the path, else an
//     addition.
func UpperChanges(ctx context.Context, lower, upper string, fn func(Change) error) error {
	var opaque []string // opaque directories on the current path, deepest last
	return filepath.WalkDir(upper, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(upper, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		path := "/" + rel
		for len(opaque) > 0 && !strings.HasPrefix(path, opaque[len(opaque)-1]+"/") {
			opaque = opaque[:len(opaque)-1]
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hidden := len(opaque) > 0
		var lowerInfo iofs.FileInfo
		if !hidden {
			if lowerInfo, err = os.Lstat(filepath.Join(lower, rel)); err != nil && !errors.Is(err, iofs.ErrNotExist) {
				return fmt.Errorf("lower layers: %w", err)
			}
		}
		c := Change{Kind: ChangeAdd, Path: path, Info: info}
		switch {
		case isWhiteout(info):
			if lowerInfo == nil {
				return nil
			}
			c.Kind, c.Info = ChangeDelete, nil
		case info.IsDir():
			isOpaque, err := hasOpaqueXattr(p)
			if err != nil {
				return err
			}
			if isOpaque {
				opaque = append(opaque, path)
			}
			if lowerInfo != nil {
				c.Kind = ChangeModify
				if !isOpaque && lowerInfo.IsDir() {
					same, err := sameDirectory(p, filepath.Join(lower, rel), info, lowerInfo)
					if err != nil || same {
						return err
					}
				}
			}
			c.Opaque = isOpaque && lowerInfo != nil
		case lowerInfo != nil:
			c.Kind = ChangeModify
		}
		return fn(c)
	})
}

// isWhiteout reports whether info is an overlayfs whiteout: a character
// device numbered 0/0.
func isWhiteout(info iofs.FileInfo) bool {
	if info.Mode()&iofs.ModeCharDevice == 0 {
		return false
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

func hasOpaqueXattr(path string) (bool, error) {
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(path, opaqueXattr, buf)
	switch {
	case err == nil:
		return n == 1 && buf[0] == 'y', nil
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return false, nil
	}
	return false, fmt.Errorf("reading %s of %s: %w", opaqueXattr, path, err)
}

// sameDirectory reports whether the upper directory carries nothing of its
// own: mode, owner, modification time and extended attributes as in lower.
func sameDirectory(upperPath, lowerPath string, upper, lower iofs.FileInfo) (bool, error) {
	us, uok := upper.Sys().(*syscall.Stat_t)
	ls, lok := lower.Sys().(*syscall.Stat_t)
	if !uok || !lok {
		return false, nil
	}
	if upper.Mode() != lower.Mode() || us.Uid != ls.Uid || us.Gid != ls.Gid ||
		us.Mtim.Sec != ls.Mtim.Sec || us.Mtim.Nsec != ls.Mtim.Nsec {
		return false, nil
	}
	ux, err := Xattrs(upperPath)
	if err != nil {
		return false, err
	}
	lx, err := Xattrs(lowerPath)
	if err != nil {
		return false, err
	}
	if len(ux) != len(lx) {
		return false, nil
	}
	for k, v := range ux {
		if w, ok := lx[k]; !ok || !bytes.Equal(v, w) {
			return false, nil
		}
	}
	return true, nil
}

// Xattrs returns the extended attributes of path (not following a
// symlink), without overlayfs' own trusted.overlay.* bookkeeping. A
// filesystem without xattr support has none.
func Xattrs(path string) (map[string][]byte, error) {
	names, err := listXattrs(path)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(names))
	for _, name := range names {
		if strings.HasPrefix(name, "trusted.overlay.") {
			continue
		}
		v, err := getXattr(path, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("reading xattr %s of %s: %w", name, path, err)
		}
		out[name] = v
	}
	return out, nil
}

func listXattrs(path string) ([]string, error) {
	size, err := unix.Llistxattr(path, nil)
	for {
		if isNoXattrSupport(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing xattrs of %s: %w", path, err)
		}
		if size == 0 {
			return nil, nil
		}
		buf := make([]byte, size)
		n, err2 := unix.Llistxattr(path, buf)
		if errors.Is(err2, unix.ERANGE) {
			size, err = unix.Llistxattr(path, nil) // grew meanwhile
			continue
		}
		if isNoXattrSupport(err2) {
			return nil, nil
		}
		if err2 != nil {
			return nil, fmt.Errorf("listing xattrs of %s: %w", path, err2)
		}
		var names []string
		for _, name := range bytes.Split(buf[:n], []byte{0}) {
			if len(name) > 0 {
				names = append(names, string(name))
			}
		}
		slices.Sort(names)
		return names, nil
	}
}

func getXattr(path, name string) ([]byte, error) {
	size, err := unix.Lgetxattr(path, name, nil)
	for {
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		n, err2 := unix.Lgetxattr(path, name, buf)
		if errors.Is(err2, unix.ERANGE) {
			size, err = unix.Lgetxattr(path, name, nil)
			continue
		}
		if err2 != nil {
			return nil, err2
		}
		return buf[:n], nil
	}
}

// isNoXattrSupport reports the answers of filesystems that keep no
// extended attributes (and of Strata's layer mounts without any, which
// answer ENOSYS).
func isNoXattrSupport(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOSYS)
}

// UpperFingerprint digests what identifies the state of an upper
// directory without reading file contents: every entry's path, type, mode,
// owner, size and modification time, a file's change time too, and a
// directory's xattrs (overlayfs' opaque mark among them). Any write, chmod,
// chown, xattr change, rename or deletion through the overlay changes it,
// so a fingerprint recorded at a commit tells whether anything changed
// since. A directory's change time is left out: making an entry in it and
// removing it again with the old times put back (a run's mount targets)
// moves it and nothing else, while each change it stands for (entries,
// mode, owner, xattrs) is in the digest by itself. So is a whiteout's:
// overlayfs makes whiteouts links of one inode in its work directory and
// empties that directory when it mounts the upper again (a daemon
// restart), which moves their change time; a whiteout has nothing else
// to change but its name and type.
func UpperFingerprint(upper string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(upper, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat information", p)
		}
		rel, _ := filepath.Rel(upper, p)
		if !d.IsDir() {
			ctime := st.Ctim
			if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
				ctime = syscall.Timespec{}
			}
			fmt.Fprintf(h, "%q %o %d %d %d %d.%d %d.%d %d\n", rel, st.Mode, st.Uid, st.Gid, st.Size,
				st.Mtim.Sec, st.Mtim.Nsec, ctime.Sec, ctime.Nsec, st.Rdev)
			return nil
		}
		fmt.Fprintf(h, "%q %o %d %d %d.%d\n", rel, st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec)
		names, err := listXattrs(p)
		if err != nil {
			return err
		}
		for _, name := range names {
			if strings.HasPrefix(name, "trusted.overlay.") && name != "trusted.overlay.opaque" {
				continue // overlayfs' bookkeeping (origin, impure), not content
			}
			v, err := getXattr(p, name)
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			if err != nil {
				return fmt.Errorf("reading xattr %s of %s: %w", name, p, err)
			}
			fmt.Fprintf(h, "  %q %x\n", name, v)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("fingerprint of %s: %w", upper, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// DiffChanges lists the changes in upper against lower as docker diff
// reports a container's, sorted by path: UpperChanges' changes, and also
//   - under a directory the step made anew (opaque), what lower holds there
//     too as changed rather than added, and what lower holds there and
//     upper does not as deleted (only the top of a deleted tree, as docker
//     lists a deleted directory alone);
//   - every directory above a change as changed, even one whose own
//     attributes match lower's (a step that restored its times), as docker
//     lists the parents of what changed.
//
// Only the directories the step made anew are read in lower, one listing
// each; it is for showing the changes, not for making a layer (a commit's
// layer holds the opaque directory as UpperChanges says, which deletes the
// rest).
func DiffChanges(ctx context.Context, lower, upper string) ([]Change, error) {
	var out []Change
	listed := map[string]bool{}
	var opaque []string // opaque directories on the current path, deepest last
	err := UpperChanges(ctx, lower, upper, func(c Change) error {
		for len(opaque) > 0 && !strings.HasPrefix(c.Path, opaque[len(opaque)-1]+"/") {
			opaque = opaque[:len(opaque)-1]
		}
		if c.Kind == ChangeAdd && len(opaque) > 0 {
			if _, err := os.Lstat(filepath.Join(lower, c.Path)); err == nil {
				c.Kind = ChangeModify
			}
		}
		out = append(out, c)
		listed[c.Path] = true
		if !c.Opaque {
			return nil
		}
		opaque = append(opaque, c.Path)
		names, err := readDirNames(filepath.Join(lower, c.Path))
		if err != nil {
			return fmt.Errorf("lower layers: %w", err)
		}
		for _, name := range names {
			p := c.Path + "/" + name
			if _, err := os.Lstat(filepath.Join(upper, p)); errors.Is(err, iofs.ErrNotExist) {
				out = append(out, Change{Kind: ChangeDelete, Path: p})
				listed[p] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, c := range slices.Clone(out) {
		for dir := path.Dir(c.Path); dir != "/" && !listed[dir]; dir = path.Dir(dir) {
			out = append(out, Change{Kind: ChangeModify, Path: dir})
			listed[dir] = true
		}
	}
	slices.SortFunc(out, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// readDirNames lists the names in directory dir; none when it is not one.
func readDirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, err
}
