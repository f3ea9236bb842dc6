package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	units "github.com/docker/go-units"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/commit"
	steprun "github.com/stratafs/strata/internal/run"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/snapshotter"
)

// commitStep is one commit in progress.
type commitStep struct {
	im       *images
	req      CommitRequest
	m        *Mount
	progress func(format string, args ...any)
}

// commit turns the changes of the writable mount at req.Dir into a new
// image and publishes it. The mount stays as it is. Nothing is published
// until every blob is in place: the manifest goes last, so a failure at
// any point leaves no manifest at the reference, the store consistent and
// the writable layer untouched.
func (im *images) commit(ctx context.Context, req CommitRequest, progress func(format string, args ...any)) (*CommitResult, error) {
	if req.SourceDateEpoch != nil {
		if err := CheckSourceDateEpoch(*req.SourceDateEpoch); err != nil {
			return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
		}
	}
	if req.Dir == "" && req.Image != "" {
		return im.amend(ctx, req, progress)
	}
	m, err := im.getWritable(req.Dir)
	if err != nil {
		return nil, err
	}
	if req.Ref == "" && req.OCILayout == "" && !req.Keep {
		return nil, fmt.Errorf("nowhere to commit to: give a reference or an OCI layout: %w", errdefs.ErrInvalidArgument)
	}
	// A run whose CLI was killed may have left its container running, with
	// nobody waiting for it: end it before looking at the run lock.
	im.d.sweepRuns(ctx)
	unlock, err := im.lockRuns(m, "commit")
	if err != nil {
		return nil, err
	}
	defer unlock()
	c := &commitStep{im: im, req: req, m: m, progress: progress}
	return c.run(ctx)
}

// sweepRuns ends the containers of runs whose strata process died.
func (d *Daemon) sweepRuns(ctx context.Context) {
	swept, err := steprun.Sweep(filepath.Join(d.cfg.Root, "run"))
	if len(swept) > 0 {
		slog.WarnContext(ctx, "ended runs left by strata processes that died", "runs", swept)
	}
	if err != nil {
		slog.ErrorContext(ctx, "ending runs left behind", "error", err)
	}
}

// runLock is the lock file of writable mount m's runs and commits.
func (im *images) runLock(m *Mount) string {
	return filepath.Join(im.d.cfg.Root, "run", "locks", m.Snapshot)
}

// lockRuns takes the mount's run lock exclusively: `strata run` holds it
// (exclusively too) while its command runs. what (commit, unmount) is what the
// refusal tells the user to do once the run has ended.
func (im *images) lockRuns(m *Mount, what string) (unlock func(), err error) {
	dir := filepath.Join(im.d.cfg.Root, "run", "locks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(im.runLock(m), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: a 'strata run', commit or unmount is in progress there; %s when it has ended: %w", m.Dir, what, errdefs.ErrFailedPrecondition)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

func (c *commitStep) run(ctx context.Context) (*CommitResult, error) {
	spec, err := c.spec()
	if err != nil {
		return nil, err
	}
	target, err := c.target()
	if err != nil {
		return nil, err
	}
	base, err := c.base(ctx)
	if err != nil {
		return nil, err
	}
	upper, err := c.im.d.writable.sn.UpperDir(ctx, c.m.Snapshot)
	if err != nil {
		return nil, err
	}
	fingerprint, err := snapshotter.UpperFingerprint(upper)
	if err != nil {
		return nil, err
	}
	res := &CommitResult{}
	c.progress("finding the changes of %s", c.m.Dir)
	layer, err := c.writeLayer(ctx, res)
	if err != nil {
		return nil, err
	}
	spec.Layer = layer
	img, err := commit.Build(base, spec)
	if err != nil {
		return nil, err
	}
	if err := c.publish(ctx, img, base, target, res); err != nil {
		return nil, err
	}
	c.im.mu.Lock()
	c.m.Committed = &CommitRecord{Ref: res.Ref, Digest: res.Digest, Time: time.Now().UTC(), Fingerprint: fingerprint, Changes: res.Changes}
	rec := *c.m
	rec.Runs = slices.Clone(c.m.Runs)
	c.im.mu.Unlock()
	if err := c.im.record(&rec); err != nil {
		// The image is published: the commit stands. Only the mount's
		// record of it is missing.
		res.Warning = fmt.Sprintf("%s is published, but the mount could not record the commit (%v): 'strata umount' will count its changes as not committed", res.Digest, err)
		slog.WarnContext(ctx, "recording the commit", "dir", c.m.Dir, "error", err)
	}
	slog.InfoContext(ctx, "committed", "dir", c.m.Dir, "ref", res.Ref, "digest", res.Digest, "layer", res.Layer, "changes", res.Changes)
	return res, nil
}

// publish pushes img to target (when there is one), writes it to the OCI
// layout asked for, keeps its manifest and config in the store, and fills
// in res's digest, reference and streamed bytes. A kept image (req.Keep)
// pushed nowhere is named in the base's repository.
func (c *commitStep) publish(ctx context.Context, img v1.Image, base *commit.Base, target name.Reference, res *CommitResult) error {
	d, err := img.Digest()
	if err != nil {
		return err
	}
	res.Digest = digest.Digest(d.String())
	// The push goes last: a failure before it (the store or the layout's
	// disk full) publishes nothing, and nothing but naming the image in the
	// layout can fail after it. The layout gets its blobs before the push
	// and names the image only once the push succeeded.
	if err := c.keep(img); err != nil {
		return err
	}
	pushed := func() error {
		if target == nil {
			return nil
		}
		if err := c.push(ctx, img, base, target); err != nil {
			return err
		}
		res.Ref = target.Context().String() + "@" + d.String()
		return nil
	}
	if c.req.OCILayout != "" {
		err = c.writeLayout(img, base, pushed)
	} else {
		err = pushed()
	}
	if err != nil {
		return err
	}
	if target == nil && c.req.Keep && c.req.OCILayout == "" {
		res.Ref = base.Repo.String() + "@" + d.String()
	}
	res.StreamedBytes = base.StreamedBytes()
	return nil
}

// spec gathers what the new config and history entry say.
func (c *commitStep) spec() (commit.Spec, error) {
	spec := commit.Spec{Author: c.req.Author, Comment: c.req.Message, Docker: c.req.Docker, Created: time.Now().UTC()}
	if c.req.SourceDateEpoch != nil {
		spec.Created = time.Unix(*c.req.SourceDateEpoch, 0).UTC()
	}
	changes, err := commit.ParseChanges(c.req.Changes)
	if err != nil {
		return spec, err
	}
	if c.req.Config != nil {
		whole := c.req.Config.DeepCopy()
		spec.Edits = append(spec.Edits, func(cfg *v1.Config) error {
			*cfg = *whole
			return nil
		})
	}
	spec.History = c.req.History
	if c.req.ResultPlatform != "" {
		p, err := v1.ParsePlatform(c.req.ResultPlatform)
		if err != nil {
			return spec, fmt.Errorf("platform %q: %w: %v", c.req.ResultPlatform, errdefs.ErrInvalidArgument, err)
		}
		spec.Platform = p
	}
	spec.HealthStartInterval = c.req.HealthStartInterval
	if d, ok := commit.HealthStartInterval(changes); ok {
		spec.HealthStartInterval = &d
	}
	if len(changes) > 0 {
		// One edit: ENTRYPOINT keeps a CMD given before it in the list.
		spec.Edits = append(spec.Edits, func(cfg *v1.Config) error { return commit.ApplyChanges(cfg, changes) })
	}
	spec.CreatedBy = c.req.CreatedBy
	if spec.CreatedBy == "" {
		spec.CreatedBy = c.req.Message
	}
	if spec.CreatedBy == "" {
		var runs []RunRecord
		if c.m != nil {
			runs = c.m.Runs
		}
		spec.CreatedBy = createdBy(runs)
	}
	return spec, nil
}

// createdBy records the commands run in the writable layer, in order.
func createdBy(runs []RunRecord) string {
	if len(runs) == 0 {
		return "strata commit"
	}
	cmds := make([]string, len(runs))
	for i, r := range runs {
		cmds[i] = "strata run -- " + shellJoin(r.Args)
	}
	return strings.Join(cmds, " && ")
}

// shellJoin quotes args for a shell where they need it.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\$`|&;<>()*?[]#~=%{}!") {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

// target parses the reference to push to, if any, and checks the OCI
// layout's path, which must be absolute: the daemon's working directory
// is not its client's.
func (c *commitStep) target() (name.Reference, error) {
	if c.req.OCILayout != "" {
		if p, _ := splitLayout(c.req.OCILayout); !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%w: OCI layout %q: the path must be absolute (the daemon does not share the client's working directory)", errdefs.ErrInvalidArgument, p)
		}
		if c.req.Docker {
			return nil, fmt.Errorf("%w: a Docker manifest in an OCI layout is read by neither skopeo nor umoci: write the layout without --docker (a separate commit can push the Docker form)", errdefs.ErrInvalidArgument)
		}
	}
	if c.req.Ref == "" {
		return nil, nil
	}
	opts := c.im.d.remoteOpts
	ref, err := remote.ParsePushReference(c.req.Ref, opts...)
	if err != nil {
		return nil, err // names the reference, and is an invalid argument
	}
	if c.req.Insecure {
		ref, err = name.ParseReference(c.req.Ref, name.Insecure)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %w", remote.ErrInvalidReference, c.req.Ref, err)
		}
	}
	return ref, nil
}

// base is the mounted image, from the store; its layers are read only
// when a push to another registry or an OCI layout needs their bytes:
// from the store when it holds them, else from the base's registry.
func (c *commitStep) base(ctx context.Context) (*commit.Base, error) {
	manifest, err := c.im.d.store.Blobs.Get(c.m.Digest)
	if err != nil {
		return nil, fmt.Errorf("manifest of the image at %s: %w", c.m.Dir, err)
	}
	config, err := c.im.d.store.Blobs.Get(c.m.Config)
	if err != nil {
		return nil, fmt.Errorf("config of the image at %s: %w", c.m.Dir, err)
	}
	repo, err := name.NewRepository(c.m.Repo, c.im.nameOptions(c.m)...)
	if err != nil {
		return nil, err
	}
	return c.im.storedBase(ctx, c, repo, c.m.Insecure, manifest, config)
}

// registryOptions are go-containerregistry's options for a registry: the
// daemon user's docker credentials and helpers, and TLS without
// verification for insecure registries (plain HTTP comes with the name).
func (c *commitStep) registryOptions(ctx context.Context, registry string, insecure bool) []ggcrremote.Option {
	opts := []ggcrremote.Option{
		ggcrremote.WithContext(ctx),
		ggcrremote.WithAuthFromKeychain(authn.DefaultKeychain),
		ggcrremote.WithUserAgent("strata"),
	}
	if insecure || slices.Contains(c.im.d.cfg.InsecureRegistries, registry) {
		tr := ggcrremote.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for: an insecure registry
		opts = append(opts, ggcrremote.WithTransport(tr))
	}
	return opts
}

// writeLayer turns the changes into a layer blob in the store, or returns
// nil when there are none.
func (c *commitStep) writeLayer(ctx context.Context, res *CommitResult) (*commit.NewLayer, error) {
	format, err := snapshotter.ParseLayerFormat(c.req.Format)
	if err == nil {
		// Checked here too, for a commit with no changes writes no layer.
		err = snapshotter.CheckLevel(format, c.req.CompressionLevel)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	// Refused before the layer is written, not after: what a Docker
	// descriptor cannot name (commit.Build says it again).
	if c.req.Docker && format != snapshotter.FormatGzip && format != snapshotter.FormatUncompressed {
		return nil, fmt.Errorf("%w: %w: the %s layer needs annotations or a media type a Docker descriptor has no place for; use --format gzip or uncompressed, or OCI form",
			errdefs.ErrInvalidArgument, commit.ErrDockerCannotCarry, format)
	}
	var made *snapshotter.Layer
	err = c.im.d.writable.lowerOf(ctx, c.m, func(lower, upper string) error {
		if err := snapshotter.UpperChanges(ctx, lower, upper, func(snapshotter.Change) error {
			res.Changes++
			return nil
		}); err != nil {
			return err
		}
		if res.Changes == 0 {
			return nil
		}
		c.progress("writing the new layer (%s) from %d changes", format, res.Changes)
		opts := snapshotter.LayerOptions{
			Format:           format,
			CompressionLevel: c.req.CompressionLevel,
			TempDir:          c.im.d.store.Blobs.TempDir(),
			Warn: func(msg string, args ...any) {
				slog.WarnContext(ctx, msg, args...)
				c.progress("warning: "+msg+" %v", args)
			},
		}
		if c.req.SourceDateEpoch != nil {
			t := time.Unix(*c.req.SourceDateEpoch, 0).UTC()
			opts.SourceDateEpoch = &t
		}
		made, err = snapshotter.WriteLayer(ctx, lower, upper, opts)
		switch {
		case errors.Is(err, snapshotter.ErrNotInTOC) && c.req.Format == "":
			// The default format cannot hold an entry of this layer
			// (a name a lazy mount would show mangled, or one the
			// format keeps for itself): plain gzip, whose tar keeps
			// it, rather than a failed step.
			slog.WarnContext(ctx, "new layer in gzip, not eStargz", "error", err)
			c.progress("warning: the new layer is gzip, not eStargz: %v", err)
			opts.Format = snapshotter.FormatGzip
			made, err = snapshotter.WriteLayer(ctx, lower, upper, opts)
		case errors.Is(err, snapshotter.ErrNotInTOC):
			err = fmt.Errorf("%w: use --format gzip, zstd or uncompressed", err)
		}
		return err
	})
	if err != nil || made == nil {
		if res.Changes == 0 && err == nil {
			c.progress("no changes: the image gets an empty history entry and no layer")
		}
		return nil, err
	}
	if err := c.im.d.store.Blobs.Ingest(made.Path, made.Digest, made.Size); err != nil {
		return nil, fmt.Errorf("storing the new layer: %w", err)
	}
	path, err := c.im.d.store.Blobs.Path(made.Digest)
	if err != nil {
		return nil, err
	}
	res.Layer, res.LayerSize = made.Digest, made.Size
	c.progress("layer %s: %s (%s uncompressed)", made.Digest, human(made.Size), human(made.UncompressedSize))
	dg, err := v1.NewHash(made.Digest.String())
	if err != nil {
		return nil, err
	}
	diffID, err := v1.NewHash(made.DiffID.String())
	if err != nil {
		return nil, err
	}
	return &commit.NewLayer{
		Path: path, Digest: dg, Size: made.Size, DiffID: diffID,
		MediaType: types.MediaType(made.MediaType), Annotations: made.Annotations,
	}, nil
}

// push publishes img at ref and reports how base blobs got there.
func (c *commitStep) push(ctx context.Context, img v1.Image, base *commit.Base, ref name.Reference) error {
	updates := make(chan v1.Update, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Time{}
		for u := range updates {
			if u.Total == 0 {
				continue // before the push has counted its blobs: "0B of 0B" says nothing
			}
			if time.Since(last) >= time.Second || u.Complete == u.Total {
				c.progress("pushing to %s: %s of %s in place (blobs the registry has or mounts count as in place)", ref.Context(), human(u.Complete), human(u.Total))
				last = time.Now()
			}
		}
	}()
	opts := append(c.registryOptions(ctx, ref.Context().RegistryStr(), c.req.Insecure), ggcrremote.WithProgress(updates))
	before, beforeLocal := base.StreamedBytes(), base.LocalBytes()
	_, err := commit.Push(ctx, img, base, ref, opts...)
	<-done
	if err != nil {
		return err
	}
	if n := base.LocalBytes() - beforeLocal; n > 0 {
		c.progress("layers made here uploaded to %s from the store: %s", ref.Context().RegistryStr(), human(n))
	}
	if n := base.StreamedBytes() - before; n > 0 {
		why := "the registries differ, so they could not be mounted"
		if base.Repo.RegistryStr() == ref.Context().RegistryStr() {
			why = "the registry did not mount them from " + base.Repo.RepositoryStr()
		}
		c.progress("base layers streamed from %s to %s: %s (%s)", base.Repo.RegistryStr(), ref.Context().RegistryStr(), human(n), why)
	}
	return nil
}

// writeLayout adds img to the OCI layout c.req.OCILayout names, calling
// publish between the blobs and the naming (commit.WriteLayout).
func (c *commitStep) writeLayout(img v1.Image, base *commit.Base, publish func() error) error {
	layout, tag := splitLayout(c.req.OCILayout)
	before := base.StreamedBytes()
	c.progress("writing the OCI layout %s (base layers are read whole for it)", layout)
	if err := commit.WriteLayout(img, layout, tag, publish); err != nil {
		return err
	}
	c.progress("OCI layout %s written; %s of base layers fetched for it", layout, human(base.StreamedBytes()-before))
	return nil
}

// keep stores the new manifest and config, so that the new image's
// metadata, like its layer, is local.
func (c *commitStep) keep(img v1.Image) error {
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	if err := c.im.d.store.Blobs.Put(digest.Digest(d.String()), raw); err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	return c.im.d.store.Blobs.Put(digest.FromBytes(cfg), cfg)
}

// splitLayout splits PATH[:TAG].
func splitLayout(s string) (path, tag string) {
	if i := strings.LastIndex(s, ":"); i > 0 && !strings.Contains(s[i:], "/") {
		return s[:i], s[i+1:]
	}
	return s, ""
}

func human(n int64) string { return units.BytesSize(float64(n)) }
