package kmount

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MaxOverlayLayers is how many lower layers overlayfs stacks (the
// kernel's OVL_MAX_STACK).
const MaxOverlayLayers = 500

// Overlay merges read-only layer directories at target, top layer first,
// with kernel overlayfs. With upper and work set, the merged tree is
// writable and changes land in upper. extra options (such as "index=off")
// are appended as given.
//
// mount(2) takes its options in one page, which some 120 layer paths
// fill; more are given one by one through the new mount API ("lowerdir+",
// Linux 6.8), up to MaxOverlayLayers.
func Overlay(target string, lowers []string, upper, work string, extra ...string) error {
	if len(lowers) == 0 {
		return errors.New("overlay: no layers")
	}
	if len(lowers) > MaxOverlayLayers {
		return fmt.Errorf("overlay: %d layers, more than the %d overlayfs stacks", len(lowers), MaxOverlayLayers)
	}
	escaped := make([]string, len(lowers))
	for i, l := range lowers {
		escaped[i] = overlayEscaper.Replace(l)
	}
	opts := "lowerdir=" + strings.Join(escaped, ":")
	if upper != "" {
		opts += ",upperdir=" + overlayEscaper.Replace(upper) + ",workdir=" + overlayEscaper.Replace(work)
	}
	for _, o := range extra {
		opts += "," + o
	}
	if len(opts) > os.Getpagesize()-1 {
		err := overlayByLayer(target, lowers, upper, work, extra)
		if errors.Is(err, errNoLowerdirPlus) {
			return fmt.Errorf("overlay: %d layers make mount options of %d bytes, over the kernel's %d (Linux 6.8 or later takes them one by one)", len(lowers), len(opts), os.Getpagesize()-1)
		}
		return err
	}
	flags := uintptr(0)
	if upper == "" {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("overlay", target, "overlay", flags, opts); err != nil {
		return fmt.Errorf("overlay mount at %s: %w", target, err)
	}
	return nil
}

// overlayEscaper escapes a path for mount(2)'s overlayfs options, which
// split options at "," and lower directories at ":": a path holding
// either (a build context named "x:y") would otherwise name other
// directories, relative ones the daemon's working directory resolves. The
// new mount API ("lowerdir+", fsconfig) takes each path whole.
var overlayEscaper = strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`)

var errNoLowerdirPlus = errors.New(`the kernel takes no "lowerdir+"`)

// overlayByLayer mounts overlayfs as Overlay does, through the new mount
// API: fsopen, one fsconfig per option and per lower layer, fsmount,
// move_mount.
func overlayByLayer(target string, lowers []string, upper, work string, extra []string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("overlay: fsopen: %w: %w", errNoLowerdirPlus, err)
	}
	defer unix.Close(fd)
	for i, l := range lowers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			if i == 0 && errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("overlay: %w: %w", errNoLowerdirPlus, err)
			}
			return fmt.Errorf("overlay: layer %d (%s): %w", i+1, l, err)
		}
	}
	set := func(key, value string) error {
		if err := unix.FsconfigSetString(fd, key, value); err != nil {
			return fmt.Errorf("overlay: option %s=%s: %w", key, value, err)
		}
		return nil
	}
	if upper != "" {
		if err := errors.Join(set("upperdir", upper), set("workdir", work)); err != nil {
			return err
		}
	}
	for _, o := range extra {
		key, value, ok := strings.Cut(o, "=")
		if !ok {
			if err := unix.FsconfigSetFlag(fd, key); err != nil {
				return fmt.Errorf("overlay: option %s: %w", key, err)
			}
			continue
		}
		if err := set(key, value); err != nil {
			return err
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("overlay mount at %s: %w", target, err)
	}
	attrs := 0
	if upper == "" {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fmt.Errorf("overlay mount at %s: %w", target, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("overlay mount at %s: %w", target, err)
	}
	return nil
}

// BindReadOnly makes src visible read-only at dst, without setuid
// programs or device files.
func BindReadOnly(src, dst string) error {
	return Bind(src, dst, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV)
}

// Bind makes src visible at dst with exactly the mount flags given
// (MS_RDONLY, MS_NOSUID, ...), whatever src's own. A bind mount takes its
// flags from the source until remounted, so that needs a second call; if
// it fails the bind is undone, leaving dst as it was.
func Bind(src, dst string, flags uintptr) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|flags, ""); err != nil {
		return errors.Join(fmt.Errorf("bind %s: setting its flags: %w", dst, err), unix.Unmount(dst, unix.MNT_DETACH))
	}
	return nil
}

// Unmount unmounts target. While it is busy (a shell sitting in it, say) it
// retries briefly, then detaches it lazily; a mount whose FUSE server died
// answers ENOTCONN to the path lookup of a plain unmount and is detached
// too. Nothing mounted at target is not an error.
func Unmount(target string) error {
	var err error
	for range 10 {
		err = unix.Unmount(target, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return Detach(target)
}

// Detach lazily detaches whatever is mounted at target: existing users
// keep it until they let go. Nothing mounted there is not an error.
func Detach(target string) error {
	err := unix.Unmount(target, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// FSType is the type of the filesystem mounted last at dir ("overlay",
// "fuse.strata"), found in the mount table without touching dir; "" when
// nothing is mounted there or it cannot be told.
func FSType(dir string) string {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(filepath.Clean(dir)))
	if err != nil || len(infos) == 0 {
		return ""
	}
	return infos[len(infos)-1].FSType
}

// IsMountpoint reports whether something is mounted on dir. When that
// cannot be told (a dead FUSE mount answers ENOTCONN to stat) it says yes,
// because callers are about to delete recursively and must not guess no.
// A missing dir is not a mountpoint.
func IsMountpoint(dir string) bool {
	mounted, err := mountinfo.Mounted(dir)
	if err != nil {
		return !errors.Is(err, iofs.ErrNotExist)
	}
	return mounted
}

// Mount is one entry of the mount table, the fields Strata uses.
type Mount struct {
	Target string
	FSType string
	Source string
}

// Under lists the mounts at or below root (root itself included), in
// mount-table order: a mount stacked on another comes after it.
func Under(root string) ([]Mount, error) {
	root = filepath.Clean(root)
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	out := make([]Mount, 0, len(infos))
	for _, in := range infos {
		out = append(out, Mount{Target: in.Mountpoint, FSType: in.FSType, Source: in.Source})
	}
	return out, nil
}

// ClearStale lazily detaches every mount at or below root, deepest and
// newest first, but those keep says are live: what a crashed daemon left
// behind. It returns what it detached.
func ClearStale(root string, keep func(target string) bool) ([]string, error) {
	mounts, err := Under(root)
	if err != nil {
		return nil, err
	}
	stale := make([]string, 0, len(mounts))
	for _, m := range mounts {
		if keep == nil || !keep(m.Target) {
			stale = append(stale, m.Target)
		}
	}
	slices.Reverse(stale)
	// Stable, so that a mount stacked twice keeps newest-first order.
	slices.SortStableFunc(stale, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, t := range stale {
		if err := Detach(t); err != nil {
			return stale, fmt.Errorf("clearing stale mount: %w", err)
		}
	}
	return stale, nil
}
