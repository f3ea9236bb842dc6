package build

// How steps become images: writable mounts, commits kept in the store, the
// build cache, the stage's last config-only commit, the push, and the
// clean-up of what a build (or a build that died) mounted.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	steprun "github.com/stratafs/strata/internal/run"

	"github.com/opencontainers/go-digest"
	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/kmount"
)

// mount gives st a writable mount of its image (the one it has, when it
// has one).
func (b *builder) mount(ctx context.Context, st *stageState) error {
	if st.dir != "" {
		return nil
	}
	// A RUN step on the FROM image itself records what it opens, once
	// per image: the list belongs to that image (see Options.Record).
	rec := b.o.Record && st.run && st.image == st.base && !b.recorded[st.base]
	dir, err := b.mountNew(ctx, daemon.MountRequest{Ref: st.image, Writable: true, Platform: st.platform,
		PrefetchBase: st.base, Record: rec, RecordPush: rec && b.o.RecordPush})
	if err != nil {
		return err
	}
	if rec {
		if b.recorded == nil {
			b.recorded = map[string]bool{}
		}
		b.recorded[st.base] = true
		if !b.o.Quiet {
			b.o.Log("  recording the files this RUN opens in " + st.base)
		}
	}
	st.dir = dir
	if st.spent != "" {
		// Dropped only now that the new mount holds the layers they
		// share: they stay mounted instead of being taken down and
		// mounted again.
		spent := st.spent
		st.spent = ""
		if err := b.unmount(ctx, spent); err != nil {
			return err
		}
	}
	return nil
}

// mountNew mounts req.Ref (with the build's --insecure) at a new
// directory of the build, unmounted by cleanup, and returns it.
func (b *builder) mountNew(ctx context.Context, req daemon.MountRequest) (string, error) {
	b.n++
	dir := filepath.Join(b.work, strconv.Itoa(b.n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	req.Dir, req.Insecure = dir, b.o.Insecure
	if _, err := b.cl.Mount(ctx, req); err != nil {
		return "", fmt.Errorf("mounting %s: %w", req.Ref, err)
	}
	b.mounted = append(b.mounted, dir)
	return dir, nil
}

// workdir runs a WORKDIR whose config change is made: when the directory
// is missing in the stage's image, it is made, mode 0755, owned by the USER
// in force (root by default), parents made on the way too, as BuildKit's
// dispatchWorkdir makes it, and that is a step of its own: one layer.
// Otherwise it is an empty_layer history entry. The cache remembers
// either outcome: a step whose image is its parent's made no layer.
func (b *builder) workdir(ctx context.Context, st *stageState) error {
	wd, user := st.config.Config.WorkingDir, st.config.Config.User
	createdBy := "WORKDIR " + wd
	key := b.cacheKey(st, "workdir "+wd+"\x00"+user)
	if b.cache != nil && !b.o.NoCache {
		if ref, ok := b.cache.get(key); ok && ref == st.image {
			st.pending = append(st.pending, b.history(createdBy, true))
			return nil
		}
	}
	if b.cached(ctx, st, key) {
		return nil
	}
	if err := b.mount(ctx, st); err != nil {
		return err
	}
	uid, gid, err := workdirOwner(st.dir, user)
	if err != nil {
		return fmt.Errorf("WORKDIR %s: %w", wd, err)
	}
	made, err := mkdirAllIn(st.dir, wd, int(uid), int(gid))
	if err != nil {
		return fmt.Errorf("WORKDIR %s: %w", wd, err)
	}
	if made == 0 {
		// Nothing to commit: the next step may run on this mount, unless
		// it should record what the FROM image's first RUN opens, which
		// only a mount made for it does.
		if b.o.Record && st.image == st.base {
			st.spent, st.dir = st.dir, ""
		} else {
			st.clean = true
		}
		st.pending = append(st.pending, b.history(createdBy, true))
		if b.cache != nil {
			b.cache.put(key, st.image)
		}
		return nil
	}
	b.res.Steps++
	return b.commitStep(ctx, st, createdBy, key)
}

// workdirOwner is whose the directories a WORKDIR makes under USER spec
// are, as BuildKit's file operation decides it: a numeric user is that
// uid and gid both; a name is looked up in the image's /etc/passwd, and a
// name it lacks (or an image without the file) is root, not an error: a
// RUN as that user fails, the WORKDIR before it does not. A group part
// sets the gid the same way, a name the image's /etc/group lacks leaving
// it as it was.
func workdirOwner(rootfs, spec string) (uid, gid uint32, err error) {
	if spec == "" {
		return 0, 0, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		uid, gid = uint32(n), uint32(n)
	} else if uid, gid, err = steprun.LookupUser(rootfs, name); errors.Is(err, steprun.ErrUserNotFound) {
		uid, gid = 0, 0
	} else if err != nil {
		return 0, 0, err
	}
	if !hasGroup {
		return uid, gid, nil
	}
	if n, err := strconv.ParseUint(group, 10, 32); err == nil {
		return uid, uint32(n), nil
	}
	switch _, g, err := steprun.LookupUser(rootfs, "0:"+group); {
	case errors.Is(err, steprun.ErrGroupNotFound):
		return uid, gid, nil
	case err != nil:
		return 0, 0, err
	default:
		return uid, g, nil
	}
}

// commitStep turns st's writable mount into the stage's next image, with
// the pending history entries and createdBy's own.
func (b *builder) commitStep(ctx context.Context, st *stageState, createdBy, key string) error {
	req := daemon.CommitRequest{
		Dir: st.dir, Keep: true, Format: b.o.Format, Config: &st.config.Config,
		History: st.pending, CreatedBy: createdBy, SourceDateEpoch: b.o.SourceDateEpoch, Author: st.author,
		HealthStartInterval: st.healthStart, ResultPlatform: st.resultPlatform,
	}
	// Of the commit's progress, its warnings (a name the layer leaves
	// out, a layer written in gzip) are the build's too.
	res, err := b.cl.Commit(ctx, req, func(line string) {
		if strings.HasPrefix(line, "warning: ") {
			b.o.Log(line)
		}
	})
	if err != nil {
		return fmt.Errorf("committing the step: %w", err)
	}
	// The committed mount is dropped once the stage's next mount is made
	// (or when the build ends).
	st.spent, st.dir, st.clean = st.dir, "", false
	st.image, st.pending = res.Ref, nil
	if b.cache != nil && key != "" {
		b.cache.put(key, res.Ref)
	}
	return nil
}

func (b *builder) unmount(ctx context.Context, dir string) error {
	if err := b.cl.Unmount(ctx, dir, true); err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	b.mounted = slices.DeleteFunc(b.mounted, func(d string) bool { return d == dir })
	return os.Remove(dir)
}

// cacheKey is the key of a step on st's current image: the image, the
// config and pending history the commit will carry, and what the step
// does (extra: the content digest of what it copies).
func (b *builder) cacheKey(st *stageState, what string, extra ...string) string {
	if b.cache == nil {
		return ""
	}
	cfg, _ := json.Marshal(st.config.Config)
	h := digest.SHA256.Digester()
	epoch := "now"
	if b.o.SourceDateEpoch != nil {
		epoch = strconv.FormatInt(*b.o.SourceDateEpoch, 10)
	}
	format := b.o.Format
	if format == "" {
		format = "estargz" // the default, keyed as when named
	}
	fmt.Fprintf(h.Hash(), "v1\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00", st.image, cfg, format, what, st.author, epoch)
	for _, p := range st.pending {
		fmt.Fprintf(h.Hash(), "%s\x00", p.CreatedBy)
	}
	if st.healthStart != nil {
		fmt.Fprintf(h.Hash(), "health start %d\x00", *st.healthStart)
	}
	if st.resultPlatform != "" {
		fmt.Fprintf(h.Hash(), "result platform %s\x00", st.resultPlatform)
	}
	for _, e := range extra {
		fmt.Fprintf(h.Hash(), "%s\x00", e)
	}
	return h.Digest().String()
}

// cached moves st to the image the cache holds for key, if any.
func (b *builder) cached(ctx context.Context, st *stageState, key string) bool {
	if b.cache == nil || key == "" || b.o.NoCache {
		return false
	}
	ref, ok := b.cache.get(key)
	if !ok {
		return false
	}
	// The store must still hold the image: resolving it by digest asks it.
	r, err := b.cl.Resolve(ctx, daemon.ResolveRequest{Ref: ref, Platform: st.platform})
	if err != nil || r.Ref != ref {
		return false
	}
	if st.dir != "" {
		if !st.clean {
			return false
		}
		// A mount of the image this step would have run on: dropped
		// with the next one.
		if st.spent == "" {
			st.spent = st.dir
		} else if err := b.unmount(ctx, st.dir); err != nil {
			return false
		}
		st.dir, st.clean = "", false
	}
	st.image, st.pending = ref, nil
	if key != b.metadataKey {
		// A stage's metadata commit is no step: not counted when it
		// is made, nor when it comes from the cache.
		b.res.Cached++
		if !b.o.Quiet {
			// The image is in the store only: its digest, not a reference
			// the FROM image's registry would answer for.
			b.o.Log("  cached: " + ref[strings.LastIndex(ref, "@")+1:])
		}
	}
	return true
}

// finish commits what a stage has pending (metadata instructions after
// its last file step), so that its image is whole.
func (b *builder) finish(ctx context.Context, st *stageState) error {
	if len(st.pending) == 0 {
		return nil
	}
	key := b.cacheKey(st, "metadata")
	b.metadataKey = key
	if b.cached(ctx, st, key) {
		return nil
	}
	n := len(st.pending)
	req := daemon.CommitRequest{
		Image: st.image, Keep: true, Config: &st.config.Config, History: st.pending[:n-1],
		CreatedBy: st.pending[n-1].CreatedBy, Author: st.author, HealthStartInterval: st.healthStart,
		ResultPlatform: st.resultPlatform,
	}
	req.SourceDateEpoch = b.o.SourceDateEpoch
	res, err := b.cl.Commit(ctx, req, nil)
	if err != nil {
		return fmt.Errorf("committing the stage's config: %w", err)
	}
	if st.dir != "" {
		// A clean mount of the image before this commit.
		if err := b.unmount(ctx, st.dir); err != nil {
			return err
		}
		st.dir, st.clean = "", false
	}
	st.image, st.pending = res.Ref, nil
	if b.cache != nil {
		b.cache.put(key, res.Ref)
	}
	return nil
}

// publish writes the OCI layout and pushes the result to every tag.
func (b *builder) publish(ctx context.Context) error {
	progress := b.o.Progress
	if progress == nil {
		progress = b.o.Log
	}
	if b.o.Quiet {
		progress = nil
	}
	// The layout goes with the last push: the daemon writes its blobs,
	// pushes, and names the image in the layout only once that push
	// succeeded, so a failed push leaves the layout as it was.
	var tags []string
	if b.o.Push {
		tags = b.o.Tags
	}
	if len(tags) == 0 && b.o.OCILayout != "" {
		tags = []string{""}
	}
	for i, tag := range tags {
		req := daemon.PushRequest{Image: b.res.Image, Ref: tag, Insecure: b.o.Insecure, SourceInsecure: b.o.Insecure}
		if i == len(tags)-1 {
			req.OCILayout = b.o.OCILayout
		}
		res, err := b.cl.Push(ctx, req, progress)
		switch {
		case err != nil && tag == "":
			return fmt.Errorf("writing the OCI layout %s: %w", b.o.OCILayout, err)
		case err != nil && !strings.Contains(err.Error(), "pushing "+tag) && !strings.Contains(err.Error(), "OCI layout"):
			return fmt.Errorf("pushing %s: %w", tag, err)
		case err != nil:
			return err
		}
		if tag != "" {
			b.res.Pushed = append(b.res.Pushed, res.Ref)
		}
	}
	return nil
}

// sweep drops what builds whose strata process died (SIGKILL, a crash)
// left: their mounts, writable layers included, and working directories.
func (b *builder) sweep(ctx context.Context) {
	works := filepath.Join(b.root, "build", "work")
	dirs, err := os.ReadDir(works)
	if err != nil {
		return
	}
	var dead []string
	for _, d := range dirs {
		dir := filepath.Join(works, d.Name())
		if steprun.Abandoned(dir) {
			dead = append(dead, dir+"/")
		}
	}
	if len(dead) == 0 {
		return
	}
	// Their RUNs' containers first: they hold the mounts.
	if _, err := steprun.Sweep(filepath.Join(b.root, "run")); err != nil {
		b.o.Log("warning: ending runs left behind: " + err.Error())
	}
	// Then the overlays of rw bind mounts and the secrets tmpfs, which the
	// daemon does not know.
	for _, d := range dead {
		ours := func(t string) bool {
			return strings.HasPrefix(filepath.Base(filepath.Dir(t)), rwPrefix) || filepath.Base(t) == secretsDir
		}
		if _, err := kmount.ClearStale(d, func(t string) bool { return !ours(t) }); err != nil {
			b.o.Log(fmt.Sprintf("warning: unmounting what a build that died left in %s: %v", d, err))
		}
	}
	ms, err := b.cl.List(ctx)
	if err != nil {
		return
	}
	failed := map[string]bool{}
	for _, m := range ms {
		for _, d := range dead {
			if strings.HasPrefix(m.Dir, d) {
				if err := b.cl.Unmount(ctx, m.Dir, true); err != nil {
					failed[d] = true
					b.o.Log(fmt.Sprintf("warning: unmounting %s, left by a build that died: %v", m.Dir, err))
				}
			}
		}
	}
	for _, d := range dead {
		if failed[d] {
			continue // never remove through a mount
		}
		if err := os.RemoveAll(d); err != nil {
			b.o.Log(fmt.Sprintf("warning: removing %s, left by a build that died: %v", d, err))
		}
	}
	b.o.Log(fmt.Sprintf("dropped what %d build(s) whose strata process died left behind", len(dead)))
}

// cleanup unmounts what the build mounted and removes its directory.
func (b *builder) cleanup(ctx context.Context) error {
	for _, release := range b.held {
		release()
	}
	b.held = nil
	var errs []error
	// rw bind mounts' overlays first: their lower may be a mount below.
	for _, dir := range slices.Backward(b.kmounts) {
		if err := kmount.Unmount(dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range slices.Clone(b.mounted) {
		if err := b.cl.Unmount(ctx, dir, true); err != nil {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", dir, err))
			continue
		}
		os.Remove(dir)
	}
	if b.work != "" && len(errs) == 0 { // never remove through a mount
		if err := os.RemoveAll(b.work); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
