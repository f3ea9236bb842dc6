package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/snapshotter"
)

// What a build step needs from the daemon: the changes of a writable mount
// and the announcement of a command run in it.

// changes lists the changes of the writable mount at dir.
func (im *images) changes(ctx context.Context, dir string) ([]Change, error) {
	m, err := im.getWritable(dir)
	if err != nil {
		return nil, err
	}
	out := []Change{}
	err = im.d.writable.lowerOf(ctx, m, func(lower, upper string) error {
		changes, err := snapshotter.DiffChanges(ctx, lower, upper)
		for _, c := range changes {
			ch := Change{Kind: c.Kind.String(), Path: c.Path}
			if !utf8.ValidString(c.Path) {
				ch.PathBytes = []byte(c.Path)
			}
			out = append(out, ch)
		}
		return err
	})
	return out, err
}

// countChanges counts the changes of the writable mount m.
func (im *images) countChanges(ctx context.Context, m *Mount) (int, error) {
	n := 0
	err := im.d.writable.changes(ctx, m, func(snapshotter.Change) error {
		n++
		return nil
	})
	return n, err
}

// checkCommitted fails unless the writable mount m has no changes, or
// none since its last commit.
func (im *images) checkCommitted(ctx context.Context, m *Mount) error {
	im.mu.Lock()
	committed := m.Committed
	im.mu.Unlock()
	if committed != nil {
		upper, err := im.d.writable.sn.UpperDir(ctx, m.Snapshot)
		if err != nil {
			return err
		}
		now, err := snapshotter.UpperFingerprint(upper)
		if err != nil {
			return err
		}
		if now == committed.Fingerprint {
			return nil
		}
	}
	n, err := im.countChanges(ctx, m)
	if err != nil {
		return fmt.Errorf("%s: counting its changes: %w", m.Dir, err)
	}
	switch {
	case n == 0 && committed != nil && committed.Changes > 0:
		return fmt.Errorf("%s has changes made since its last commit (%s): they take it back to the image it was mounted from; commit them, or unmount with --discard to drop them: %w",
			m.Dir, committed.Digest, errdefs.ErrFailedPrecondition)
	case n == 0:
		return nil
	case committed != nil:
		return fmt.Errorf("%s has changes made since its last commit (%s; %d change(s) in all, see 'strata diff %s'): commit them, or unmount with --discard to drop them: %w",
			m.Dir, committed.Digest, n, m.Dir, errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("%s has %d uncommitted change(s) (see 'strata diff %s'): commit them, or unmount with --discard to drop them: %w",
		m.Dir, n, m.Dir, errdefs.ErrFailedPrecondition)
}

// changeBytes is the disk used by the changes of the writable mount m.
func (im *images) changeBytes(ctx context.Context, m *Mount) (int64, error) {
	u, err := im.d.writable.sn.Usage(ctx, m.Snapshot)
	return u.Size, err
}

// startRun records a command about to run in the writable mount at
// req.Dir (for the commit's history) and returns what running it needs.
func (im *images) startRun(ctx context.Context, req RunRequest) (*RunInfo, error) {
	m, err := im.getWritable(req.Dir)
	if err != nil {
		return nil, err
	}
	raw, err := im.d.store.Blobs.Get(m.Config)
	if err != nil {
		return nil, fmt.Errorf("config of the image at %s: %w", m.Dir, err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("config of the image at %s: %w", m.Dir, err)
	}
	stateDir := filepath.Join(im.d.cfg.Root, "run")
	locks := filepath.Join(stateDir, "locks")
	if err := os.MkdirAll(locks, 0o700); err != nil {
		return nil, err
	}
	args := slices.Clone(req.Args)
	if len(args) == 0 {
		args = append(slices.Clone(cfg.Config.Entrypoint), cfg.Config.Cmd...)
	}
	im.mu.Lock()
	m.Runs = append(m.Runs, RunRecord{Args: args, Started: time.Now().UTC()})
	rec := *m
	rec.Runs = slices.Clone(m.Runs)
	im.mu.Unlock()
	if err := im.record(&rec); err != nil {
		return nil, fmt.Errorf("recording the run: %w", err)
	}
	return &RunInfo{
		Dir:      m.Dir,
		Config:   cfg.Config,
		StateDir: stateDir,
		LockFile: im.runLock(m),
	}, nil
}
