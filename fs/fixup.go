package fs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
)

// Directories without an entry. A layer may hold a directory only as the
// parent of its entries (hand-made tars do, and BuildKit's layers for
// their root; docker and buildah write every entry). A sequential unpack leaves such a directory as
// the lower layers made it: mode, owner and xattrs of the nearest lower
// entry. overlayfs takes a directory's attributes from the topmost layer
// that holds it, where this layer's index has the builder's defaults (0755,
// root, time 0); and a layer's mount is shared by every image that has it,
// on whatever layers, so it cannot answer for the lower ones. So a stack
// whose topmost holder of a directory holds it implicitly gets one more
// lower directory on top of its layers, a fixup: a small tree on local
// disk holding those directories (and their parents) with the attributes
// the unpack gives them, and nothing else. overlayfs then shows the
// fixup's attributes and merges the contents of the layers below as before
// (no fixup directory is opaque). Fixups are named by their content and
// never change, so a snapshot's mounts may name one for as long as it
// lives.

// Fix is one directory of a fixup: path ("." for the root) and the
// attributes it must show.
type Fix struct {
	Path    string
	Mode    uint32 // permission bits with setuid, setgid and sticky
	UID     uint32
	GID     uint32
	ModTime time.Time
	Xattrs  map[string][]byte
}

// maxFixes bounds a fixup: a hostile image could list millions of
// directories without entries.
const maxFixes = 4 * index.MaxImplicit

// ErrTooManyFixes is wrapped when a stack needs more fixes than maxFixes.
var ErrTooManyFixes = errors.New("too many directories without an entry")

// fixTree is one layer of a stack as fixups see it.
type fixTree interface {
	// implicit lists the layer's directories without an entry (see
	// index.Info.Implicit); nil for a directory of real files.
	implicit() []string
	// lookup says what the layer holds at path.
	lookup(path string) (fixNode, error)
}

// fixNode is what one layer holds at a path.
type fixNode struct {
	// kind: nodeAbsent, nodeDir, or nodeHides (a whiteout, a
	// non-directory, or one of them in place of a parent: the path is
	// hidden from the layers below, and shows nothing of this one).
	kind nodeKind
	// opaqueAbove: a parent of the path is an opaque directory in this
	// layer, so lower layers show nothing at the path.
	opaqueAbove bool
	// For nodeDir: the directory's attributes, whether it has an entry
	// of its own, whether the layer made it anew in place of a whiteout
	// of its own (index.IsRecreated), and whether it is opaque.
	fix       Fix
	implicit  bool
	recreated bool
	opaque    bool
}

type nodeKind int

const (
	nodeAbsent nodeKind = iota
	nodeDir
	nodeHides
)

// source says where a directory of a stack gets its attributes from.
type source int

const (
	notVisible source = iota // no directory of the stack
	ownEntry                 // its topmost holder's entry
	lowerEntry               // a lower layer's entry: the topmost holder has none
	noEntry                  // no layer has an entry: made by the unpack
)

// resolve returns the attributes a sequential unpack of layers (top
// first) gives the directory at p, and where they come from; for noEntry
// the builder's defaults, which fixes adjusts.
func resolve(layers []fixTree, p string) (Fix, source, error) {
	held := false // a layer above holds p without an entry
	for _, l := range layers {
		n, err := l.lookup(p)
		if err != nil {
			return Fix{}, notVisible, err
		}
		switch {
		case n.kind == nodeHides:
			return stopAt(p, held)
		case n.kind == nodeDir && !n.implicit && !held:
			return n.fix, ownEntry, nil
		case n.kind == nodeDir && !n.implicit:
			f := n.fix
			f.Path = p
			return f, lowerEntry, nil
		case n.kind == nodeDir && n.recreated:
			// The unpack removed the lower one and made it anew (an
			// opaque marker alone only empties it: it is kept).
			return defaultFix(p), noEntry, nil
		case n.kind == nodeDir:
			held = true
		}
		if n.opaqueAbove {
			break
		}
	}
	return stopAt(p, held)
}

// stopAt is resolve's answer when nothing below can give p attributes.
func stopAt(p string, held bool) (Fix, source, error) {
	if !held {
		return Fix{}, notVisible, nil
	}
	return defaultFix(p), noEntry, nil
}

// defaultFix is what the tree builder gives a directory without an entry.
func defaultFix(p string) Fix {
	return Fix{Path: p, Mode: 0o755}
}

// fixes lists what a stack of layers (top first) needs: every directory
// whose topmost holder has no entry for it while the unpack gives it
// other attributes than the builder's defaults (a lower layer's entry;
// or, for a directory no layer has an entry for, the group and setgid
// bit of a setgid parent, as mkdir gives them), with its parents and the
// root (a fixup's directories show over the layers', so each gets the
// attributes the unpack gives it). None when nothing needs a fix.
func fixes(layers []fixTree) ([]Fix, error) {
	if len(layers) == 0 {
		return nil, nil
	}
	var candidates []string
	for _, l := range layers {
		candidates = append(candidates, l.implicit()...)
	}
	slices.Sort(candidates) // parents first
	candidates = slices.Compact(candidates)
	memo := map[string]Fix{}
	var attrs func(p string) (Fix, source, bool, error)
	// attrs returns what the unpack gives the directory p, where that
	// comes from, and whether it differs from what overlayfs would show
	// without a fixup.
	attrs = func(p string) (Fix, source, bool, error) {
		f, src, err := resolve(layers, p)
		if err != nil || src != noEntry {
			return f, src, src == lowerEntry, err
		}
		if p == "." {
			return f, src, false, nil
		}
		parent, ok := memo[path.Dir(p)]
		if !ok {
			var psrc source
			if parent, psrc, _, err = attrs(path.Dir(p)); err != nil {
				return Fix{}, src, false, err
			} else if psrc == notVisible {
				return Fix{}, src, false, fmt.Errorf("internal error: %q, a parent of a directory of the stack, is no directory of it", path.Dir(p))
			}
		}
		if parent.Mode&0o2000 != 0 {
			f.GID, f.Mode = parent.GID, f.Mode|0o2000
			return f, src, true, nil
		}
		return f, src, false, nil
	}
	out := map[string]Fix{}
	for _, p := range candidates {
		f, src, needed, err := attrs(p)
		if err != nil {
			return nil, err
		}
		if src == notVisible || src == ownEntry {
			continue
		}
		memo[p] = f
		if !needed {
			continue
		}
		for q := p; ; q = path.Dir(q) {
			if _, ok := out[q]; !ok {
				if len(out) >= maxFixes {
					return nil, fmt.Errorf("%w: more than %d need their attributes from a lower layer", ErrTooManyFixes, maxFixes)
				}
				a, ok := memo[q]
				if !ok {
					var qsrc source
					if a, qsrc, _, err = attrs(q); err != nil {
						return nil, err
					} else if qsrc == notVisible {
						return nil, fmt.Errorf("internal error: %q, a parent of a directory of the stack, is no directory of it", q)
					}
					memo[q] = a
				}
				out[q] = a
			}
			if q == "." {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	list := make([]Fix, 0, len(out))
	for _, f := range out {
		list = append(list, f)
	}
	slices.SortFunc(list, func(a, b Fix) int { return strings.Compare(a.Path, b.Path) })
	return list, nil
}

// indexTree is a layer of the pool, seen through its index.
type indexTree struct{ v View }

func (t indexTree) implicit() []string {
	info := t.v.Info()
	if info.ImplicitMore {
		slog.Warn("a layer holds more directories without an entry than are shown with their lower layers' attributes",
			"listed", len(info.Implicit))
	}
	return info.Implicit
}

func (t indexTree) lookup(p string) (fixNode, error) {
	e, err := t.v.Entry(index.RootIno)
	if err != nil {
		return fixNode{}, err
	}
	var n fixNode
	if p != "." {
		for _, name := range strings.Split(p, "/") {
			if isOpaque(e.Xattrs) {
				n.opaqueAbove = true
			}
			var found bool
			e, found, err = t.v.Lookup(e.Ino, name)
			if err != nil {
				return fixNode{}, err
			}
			if !found {
				return fixNode{kind: nodeAbsent, opaqueAbove: n.opaqueAbove}, nil
			}
			if e.Type != index.TypeDir {
				return fixNode{kind: nodeHides}, nil
			}
		}
	}
	n.kind = nodeDir
	n.implicit, n.recreated = index.IsImplicit(&e), index.IsRecreated(&e)
	n.opaque = isOpaque(e.Xattrs)
	n.fix = Fix{Path: p, Mode: e.Mode & 0o7777, UID: e.UID, GID: e.GID, ModTime: e.ModTime, Xattrs: fixXattrs(e.Xattrs)}
	return n, nil
}

func isOpaque(x map[string][]byte) bool {
	return string(x[index.XattrOverlayOpaque]) == "y"
}

// fixXattrs are a directory's xattrs but overlayfs's own, which would
// change how the fixup merges.
func fixXattrs(x map[string][]byte) map[string][]byte {
	var out map[string][]byte
	for k, v := range x {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[k] = v
	}
	return out
}

// dirTree is a layer that is a directory on disk (a layer unpacked by
// containerd, the empty lower of a one-layer image): every directory in
// it has an entry.
type dirTree struct{ dir string }

func (t dirTree) implicit() []string { return nil }

func (t dirTree) lookup(p string) (fixNode, error) {
	var n fixNode
	cur := t.dir
	if p != "." {
		for _, name := range strings.Split(p, "/") {
			if dirOpaque(cur) {
				n.opaqueAbove = true
			}
			cur = filepath.Join(cur, name)
			var st unix.Stat_t
			if err := unix.Lstat(cur, &st); errors.Is(err, unix.ENOENT) {
				return fixNode{kind: nodeAbsent, opaqueAbove: n.opaqueAbove}, nil
			} else if err != nil {
				return fixNode{}, err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return fixNode{kind: nodeHides}, nil
			}
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(cur, &st); err != nil {
		return fixNode{}, err
	}
	x, err := dirXattrs(cur)
	if err != nil {
		return fixNode{}, err
	}
	n.kind = nodeDir
	n.opaque = dirOpaque(cur)
	n.fix = Fix{Path: p, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC(), Xattrs: fixXattrs(x)}
	return n, nil
}

func dirOpaque(dir string) bool {
	b := make([]byte, 8)
	n, err := unix.Lgetxattr(dir, index.XattrOverlayOpaque, b)
	return err == nil && string(b[:n]) == "y"
}

// dirXattrs reads every xattr of dir.
func dirXattrs(dir string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(dir, nil)
	if err != nil || size == 0 {
		return nil, ignoreNoXattrs(err)
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(dir, buf)
	if err != nil {
		return nil, ignoreNoXattrs(err)
	}
	out := map[string][]byte{}
	for _, k := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		v := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(dir, k, v)
		if err != nil {
			return nil, fmt.Errorf("%s: xattr %s: %w", dir, k, err)
		}
		out[k] = v[:n]
	}
	return out, nil
}

func ignoreNoXattrs(err error) error {
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	return err
}

// FixupDir returns the fixup directory the stack of lowers (directories,
// top first: the pool's layer mounts, binds of them, or plain
// directories) needs, made under root if it is not there yet; "" when the
// stack needs none.
func (p *Pool) FixupDir(lowers []string, root string) (string, error) {
	views := p.viewsByDevice()
	if views == nil {
		return "", nil
	}
	trees := make([]fixTree, len(lowers))
	for i, dir := range lowers {
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return "", err
		}
		if v, ok := views[st.Dev]; ok && st.Ino == index.RootIno {
			trees[i] = indexTree{v}
		} else {
			trees[i] = dirTree{dir}
		}
	}
	list, err := fixes(trees)
	if err != nil || list == nil {
		return "", err
	}
	return writeFixup(root, list)
}

// viewsByDevice maps the device of each mounted layer of the pool (which
// a bind of it shares) to its index; nil when no layer lists a directory
// without an entry (the usual case: every mount asks, and then nothing is
// stat'ed).
func (p *Pool) viewsByDevice() map[uint64]View {
	type mounted struct {
		dir  string
		view View
	}
	var list []mounted
	p.mu.Lock()
	for _, pl := range p.layers {
		select {
		case <-pl.ready:
			if pl.err == nil && pl.content != nil {
				list = append(list, mounted{pl.dir, pl.content.idx})
			}
		default:
		}
	}
	p.mu.Unlock()
	implicit := false
	for _, m := range list {
		implicit = implicit || len(m.view.Info().Implicit) > 0
	}
	if !implicit {
		return nil // no layer holds a directory without an entry: no stack needs a fixup
	}
	out := make(map[uint64]View, len(list))
	for _, m := range list { // stat outside the lock: the mounts answer it
		var st unix.Stat_t
		if err := unix.Stat(m.dir, &st); err == nil {
			out[st.Dev] = m.view
		}
	}
	return out
}

// writeFixup makes the fixup for list under root, named by its content,
// unless it is there, and returns its path. It is made in a temporary
// directory and renamed into place, so a fixup that exists is complete.
func writeFixup(root string, list []Fix) (string, error) {
	var key bytes.Buffer
	for _, f := range list {
		if f.Path != "." && !filepath.IsLocal(f.Path) {
			return "", fmt.Errorf("fixup: path %q is not inside the image", f.Path)
		}
		fmt.Fprintf(&key, "%q %o %d %d %d\n", f.Path, f.Mode, f.UID, f.GID, f.ModTime.UnixNano())
		for _, k := range slices.Sorted(maps.Keys(f.Xattrs)) {
			fmt.Fprintf(&key, " %q=%q\n", k, f.Xattrs[k])
		}
	}
	sum := sha256.Sum256(key.Bytes())
	final := filepath.Join(root, hex.EncodeToString(sum[:]))
	if _, err := os.Lstat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(root, ".making-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)  // gone once renamed
	for _, f := range list { // parents first: the list is in path order
		if f.Path != "." {
			if err := os.Mkdir(filepath.Join(tmp, f.Path), 0o700); err != nil {
				return "", fmt.Errorf("fixup: %w", err)
			}
		}
	}
	// Attributes deepest first: making a child changes its parent's time.
	for i := len(list) - 1; i >= 0; i-- {
		f := list[i]
		p := filepath.Join(tmp, f.Path)
		for k, v := range f.Xattrs {
			// One this filesystem will not hold (a namespace it lacks)
			// is missing from the directory, not a failed mount.
			if err := unix.Lsetxattr(p, k, v, 0); err != nil {
				slog.Warn("fixup: directory attribute not kept", "path", f.Path, "xattr", k, "error", err)
			}
		}
		if err := os.Lchown(p, int(f.UID), int(f.GID)); err != nil {
			return "", fmt.Errorf("fixup: %w", err)
		}
		if err := unix.Chmod(p, f.Mode); err != nil { // after chown, which may clear setgid
			return "", fmt.Errorf("fixup: %s: %w", f.Path, err)
		}
		ts := []unix.Timespec{unix.NsecToTimespec(f.ModTime.UnixNano()), unix.NsecToTimespec(f.ModTime.UnixNano())}
		if f.ModTime.IsZero() {
			ts = []unix.Timespec{{}, {}}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return "", fmt.Errorf("fixup: %s: %w", f.Path, err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return final, nil // made meanwhile by another mount
		}
		return "", fmt.Errorf("fixup: %w", err)
	}
	return final, nil
}
