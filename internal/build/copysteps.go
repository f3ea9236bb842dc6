package build

// COPY and ADD steps, and the roots they read: the context, an earlier
// stage or an image.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	digest "github.com/opencontainers/go-digest"
	"github.com/stratafs/strata/internal/daemon"
	steprun "github.com/stratafs/strata/internal/run"
	"golang.org/x/sys/unix"
)

// sourceRoot is the directory a COPY --from or a bind mount's from= reads:
// the context for "", else an earlier stage or an image, mounted
// read-only. what names it for the cache key.
func (b *builder) sourceRoot(ctx context.Context, st *stageState, from string) (root, what string, err error) {
	if from == "" {
		return b.o.Context, "context", nil
	}
	var image string
	// needed checked every source of the stage's steps already.
	j, err := b.sourceStage(from, st.idx, kindCopy)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrBuild, err)
	}
	if j >= 0 {
		if b.done[j] == nil {
			// Named by a base image's ONBUILD trigger: not known
			// to be needed before the base was resolved.
			if err := b.runNeeded(ctx, j); err != nil {
				return "", "", err
			}
		}
		src := b.done[j]
		if err := b.finish(ctx, src); err != nil {
			return "", "", err
		}
		image = src.image
	} else {
		if _, err := name.ParseReference(from); err != nil {
			return "", "", fmt.Errorf("%w: --from=%s is neither a stage nor an image reference", ErrBuild, from)
		}
		r, err := b.cl.Resolve(ctx, daemon.ResolveRequest{Ref: from, Platform: st.platform, Insecure: b.o.Insecure})
		if err != nil {
			return "", "", fmt.Errorf("--from=%s is neither a stage nor an image: %w", from, err)
		}
		image = r.Ref
	}
	if dir, ok := b.ro[image]; ok {
		return dir, image, nil
	}
	dir, err := b.mountNew(ctx, daemon.MountRequest{Ref: image, Platform: st.platform})
	if err != nil {
		return "", "", err
	}
	b.ro[image] = dir
	return dir, image, nil
}

// excludesFor is .dockerignore for the context, nothing for images.
func (b *builder) excludesFor(from string) []string {
	if from != "" {
		return nil
	}
	return b.ignore
}

// copy carries out a COPY.
func (b *builder) copy(ctx context.Context, st *stageState, c *instructions.CopyCommand) error {
	if err := c.Expand(st.expander()); err != nil {
		return err
	}
	if err := c.ExpandRaw(st.rawExpander()); err != nil {
		return err
	}
	return b.copyFiles(ctx, st, c.SourcesAndDest, c.From, c.Chown, c.Chmod, c.ExcludePatterns, "", c.Link, c.Parents, false, commandText(c))
}

// add carries out an ADD.
func (b *builder) add(ctx context.Context, st *stageState, c *instructions.AddCommand) error {
	if err := c.Expand(st.expander()); err != nil {
		return err
	}
	if err := c.ExpandRaw(st.rawExpander()); err != nil {
		return err
	}
	if c.KeepGitDir != nil || c.Unpack != nil {
		return errors.New("ADD --keep-git-dir and --unpack are not supported")
	}
	var sum digest.Digest
	if c.Checksum != "" {
		var err error
		if sum, err = digest.Parse(c.Checksum); err != nil {
			return fmt.Errorf("--checksum=%s: %w", c.Checksum, err)
		}
	}
	for _, s := range c.SourcePaths {
		if strings.HasPrefix(s, "git@") || strings.HasSuffix(strings.SplitN(s, "#", 2)[0], ".git") {
			return fmt.Errorf("ADD of a git repository (%s) is not supported", s)
		}
	}
	return b.copyFiles(ctx, st, c.SourcesAndDest, "", c.Chown, c.Chmod, c.ExcludePatterns, sum, c.Link, false, true, commandText(c))
}

// chownIDs resolves --chown=spec in the image at rootfs: names through its
// /etc/passwd and /etc/group, a name alone with its primary group, and a
// numeric uid alone with the same number as gid (BuildKit's and buildah's
// rule, where USER takes the group /etc/passwd gives that uid).
func chownIDs(rootfs, spec string) (uid, gid uint32, err error) {
	if n, err := strconv.ParseUint(spec, 10, 32); err == nil {
		return uint32(n), uint32(n), nil
	}
	return steprun.LookupUser(rootfs, spec)
}

// copyFiles is COPY and ADD: what they copy is checksummed for the cache
// key, then copied into a writable mount of the stage's image.
func (b *builder) copyFiles(ctx context.Context, st *stageState, sd instructions.SourcesAndDest, from, chown, chmod string, exclude []string, checksum digest.Digest, link, parents, add bool, text string) error {
	spec := CopySpec{Sources: slices.Clone(sd.SourcePaths), Add: add, Link: link, Parents: parents, SourceExcludes: slices.Clone(exclude), Checksum: checksum}
	what := "context"
	if len(sd.SourceContents) > 0 {
		// Heredoc files: written to a directory of their own.
		b.n++
		dir := filepath.Join(b.work, "inline-"+strconv.Itoa(b.n))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		for _, sc := range sd.SourceContents {
			name := path.Base(path.Clean("/" + sc.Path))
			if err := os.WriteFile(filepath.Join(dir, name), []byte(sc.Data), 0o644); err != nil {
				return err
			}
			spec.Sources = append(spec.Sources, name)
		}
		spec.SrcRoot, what = dir, "inline"
	} else {
		root, w, err := b.sourceRoot(ctx, st, from)
		if err != nil {
			return err
		}
		spec.SrcRoot, what = root, w
		spec.Excludes = b.excludesFor(from)
		spec.KeepOwners = from != "" && chown == ""
	}
	if chmod != "" {
		// As BuildKit reads it: octal, else a symbolic mode; a numeric
		// value that is no octal mode gets its message.
		n, err := strconv.ParseUint(chmod, 8, 32)
		switch {
		case err == nil && n <= 0o7777:
			m := os.FileMode(n)
			spec.Chmod = &m
		case err == nil || chmod[0] >= '0' && chmod[0] <= '9':
			return fmt.Errorf("--chmod=%s: want an octal mode between 0 and 07777, such as 0755, or a symbolic one such as u+x", chmod)
		default:
			spec.ChmodSymbolic = chmod
		}
	}
	spec.Dest = inImage(st.config.Config.WorkingDir, sd.DestPath)
	if add {
		spec.Downloads = &Downloads{Dir: b.work}
		defer spec.Downloads.Remove()
	}
	sum, err := Checksum(ctx, spec)
	if err != nil {
		return err
	}
	key := b.cacheKey(st, text, what, sum.String(), "chown="+chown, "chmod="+chmod, "dest="+spec.Dest, "sources="+strings.Join(spec.Sources, "\x00"))
	if b.cached(ctx, st, key) {
		return nil
	}
	if err := b.mount(ctx, st); err != nil {
		return err
	}
	if chown != "" {
		uid, gid, err := chownIDs(st.dir, chown)
		if err != nil {
			return fmt.Errorf("--chown=%s: %w", chown, err)
		}
		spec.UID, spec.GID = int(uid), int(gid)
	}
	spec.DestRoot = st.dir
	spec.Chown = chown != ""
	if _, err := Copy(ctx, spec); err != nil {
		return err
	}
	b.res.Steps++
	return b.commitStep(ctx, st, copyCreatedBy(add, parents, chown, chmod, sd), key)
}

// copyCreatedBy is a COPY's or ADD's history entry as BuildKit writes it:
// the options that decide where the files go and whose they are, the
// sources (expanded) and heredoc names, then the destination as written
// (the cache key takes the instruction as written, text).
func copyCreatedBy(add, parents bool, chown, chmod string, sd instructions.SourcesAndDest) string {
	var b strings.Builder
	if add {
		b.WriteString("ADD")
	} else {
		b.WriteString("COPY")
	}
	if parents {
		b.WriteString(" --parents")
	}
	if chown != "" {
		b.WriteString(" --chown=" + chown)
	}
	if chmod != "" {
		b.WriteString(" --chmod=" + chmod)
	}
	for _, src := range sd.SourcePaths {
		b.WriteString(" " + src)
	}
	for _, sc := range sd.SourceContents {
		b.WriteString(" <<" + sc.Path)
	}
	b.WriteString(" " + sd.DestPath)
	return b.String()
}

// mkdirAllIn makes dir (absolute in the image) and its missing parents in
// root, owned by uid:gid with mode 0755, resolving symlinks inside root,
// and says how many directories it made.
func mkdirAllIn(root, dir string, uid, gid int) (made int, err error) {
	r, err := openFsRoot(root)
	if err != nil {
		return 0, err
	}
	defer r.close()
	fd, made, err := r.mkdirAll(cleanRel(dir), newDirAttrs{uid: uid, gid: gid, mode: 0o755})
	if err != nil {
		return made, err
	}
	return made, unix.Close(fd)
}
