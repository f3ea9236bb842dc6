package index

import (
	"errors"
	"fmt"
	"math"
	"path"
	"strings"
	"time"
)

// OCI whiteout markers (image-spec layer.md) and the overlayfs form they
// are turned into.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// XattrOverlayOpaque marks a directory whose lower-layer contents are
	// hidden; overlayfs reads it from the lower layers we serve.
	XattrOverlayOpaque = "trusted.overlay.opaque"
	// overlayXattrPrefix is reserved: a layer may not set overlayfs's own
	// xattrs (redirect, metacopy, ...) on its files, or it could steer
	// how the kernel merges the layers below it.
	overlayXattrPrefix = "trusted.overlay."
	xattrNameMax       = 255 // Linux XATTR_NAME_MAX
)

// cleanName turns an entry name of a layer archive into a clean relative
// path, "" being the root. It accepts what tar writers produce ("./a/b",
// "a/b/", "a//b") and refuses names that could leave the layer or that
// Linux cannot hold, in the spirit of archive/tar's ErrInsecurePath:
// absolute names, any ".." component (even one that would stay inside),
// NUL bytes, components over MaxNameLen (a whiteout's without its ".wh.")
// and paths over MaxPathLen.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("name contains a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute name")
	}
	if len(name) > MaxPathLen {
		return "", fmt.Errorf("name is %d bytes, more than %d", len(name), MaxPathLen)
	}
	// One pass, allocating nothing in the common case: with no ".."
	// component, path.Clean only drops empty and "." components, so the
	// clean name's components are the others, and a name with none of
	// those once its trailing slashes (tar's mark of a directory) are cut
	// is already clean.
	trimmed := strings.TrimRight(name, "/")
	clean, longest := true, 0
	for rest := trimmed; ; {
		comp, after, more := strings.Cut(rest, "/")
		switch comp {
		case "..":
			return "", errors.New(`name has a ".." component`)
		case "", ".":
			clean = false
		default:
			// A whiteout of a name of 252 bytes or more is longer
			// than a name may be: the limit is the hidden name's,
			// which is what the tree holds.
			longest = max(longest, len(strings.TrimPrefix(comp, whiteoutPrefix)))
		}
		if !more {
			break
		}
		rest = after
	}
	if longest > MaxNameLen {
		return "", fmt.Errorf("name component is %d bytes, more than %d", longest, MaxNameLen)
	}
	if clean {
		return trimmed, nil
	}
	if c := path.Clean(name); c != "." {
		return c, nil
	}
	return "", nil
}

// splitName returns the parent directory ("" for the root) and base name
// of a clean, non-root name.
func splitName(name string) (dir, base string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

// isWhiteoutName reports whether the last component of a clean name is
// an OCI whiteout or opaque marker.
func isWhiteoutName(name string) bool {
	_, base := splitName(name)
	return strings.HasPrefix(base, whiteoutPrefix)
}

// whiteoutTarget returns the name a whiteout base name hides. The name
// must be one that could exist: not empty, "." or "..".
func whiteoutTarget(base string) (string, error) {
	target := strings.TrimPrefix(base, whiteoutPrefix)
	if target == "" || target == "." || target == ".." {
		return "", fmt.Errorf("whiteout %q hides no valid name", base)
	}
	return target, nil
}

// entryMeta converts the metadata every entry type shares: mode, owner,
// mtime and xattrs.
//
// The mode is tar.Header.Mode as the archive (or the eStargz writer,
// which copies it from the tar header) states it, so the
// setuid/setgid/sticky bits are the Unix ones (04000/02000/01000), not
// Go's os.FileMode bits, and type bits a writer may leave above 07777 are
// dropped: the entry type is authoritative.
func entryMeta(h *header) (Entry, error) {
	var m Entry
	if h.UID < 0 || h.UID > math.MaxUint32 || h.GID < 0 || h.GID > math.MaxUint32 {
		return m, fmt.Errorf("uid %d / gid %d outside [0, 2^32-1]", h.UID, h.GID)
	}
	m.UID, m.GID = uint32(h.UID), uint32(h.GID)
	m.Mode = uint32(h.Mode & 07777)
	m.ModTime = h.ModTime
	if h.Type == TypeDir && m.ModTime.IsZero() {
		// A directory's entry without a time (an eStargz TOC leaves
		// 1970 out): a zero time marks the directories no entry
		// describes (ImplicitDirs), and this one has an entry.
		m.ModTime = time.Unix(0, 0).UTC()
	}
	x, err := convertXattrs(h.Xattrs)
	if err != nil {
		return m, err
	}
	m.Xattrs = x
	return m, nil
}

// convertXattrs checks the limits and drops overlayfs's reserved xattrs;
// the opaque marker is derived from ".wh..wh..opq" entries only.
func convertXattrs(in map[string][]byte) (map[string][]byte, error) {
	if len(in) > MaxXattrs {
		return nil, fmt.Errorf("%d xattrs, more than %d", len(in), MaxXattrs)
	}
	var out map[string][]byte
	for k, v := range in {
		if k == "" || len(k) > xattrNameMax || strings.IndexByte(k, 0) >= 0 {
			return nil, fmt.Errorf("invalid xattr name %q", k)
		}
		if len(v) > MaxXattrSize {
			return nil, fmt.Errorf("xattr %q is %d bytes, more than %d", k, len(v), MaxXattrSize)
		}
		if strings.HasPrefix(k, overlayXattrPrefix) {
			continue
		}
		if out == nil {
			out = make(map[string][]byte, len(in))
		}
		out[k] = v
	}
	return out, nil
}

// checkDevice converts device numbers, which Linux holds in 32 bits each.
func checkDevice(major, minor int64) (uint32, uint32, error) {
	if major < 0 || major > math.MaxUint32 || minor < 0 || minor > math.MaxUint32 {
		return 0, 0, fmt.Errorf("device %d:%d outside [0, 2^32-1]", major, minor)
	}
	return uint32(major), uint32(minor), nil
}

// checkSymlinkTarget refuses targets Linux cannot store. The target
// itself may be absolute or contain "..": it is only ever returned by
// readlink and resolved by the kernel inside the mount.
func checkSymlinkTarget(target string) error {
	switch {
	case target == "":
		return errors.New("symlink with an empty target")
	case strings.IndexByte(target, 0) >= 0:
		return errors.New("symlink target contains a NUL byte")
	case len(target) > MaxPathLen:
		return fmt.Errorf("symlink target is %d bytes, more than %d", len(target), MaxPathLen)
	}
	return nil
}
