package fs

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/stratafs/strata/remote"
)

// sourcesBlob reads a layer from the first of its repositories that still
// has it. A layer is pooled by digest, once for every image that holds it,
// and each of those images names a repository it can be read from: when
// the one the layer is read from answers 404 (its image's blob deleted, a
// repository gone), the others are tried in the order they came, and the
// first that serves is read from from then on. Every source's bytes are
// verified the same way (the digest is the layer's), so which repository
// served a chunk never matters.
type sourcesBlob struct {
	open func(ctx context.Context, repo name.Repository, opts []remote.Option) (layerBlob, error)

	mu    sync.Mutex
	cur   layerBlob
	repos []string    // the repositories known, cur's first
	next  []altSource // those not tried yet, in the order they came
	spent []layerBlob // sources given up, for Stats and Close
}

type altSource struct {
	repo name.Repository
	opts []remote.Option
}

// maxSources bounds the repositories a layer keeps to fall back on.
const maxSources = 16

var _ layerBlob = (*sourcesBlob)(nil)

func newSourcesBlob(b layerBlob, repo name.Repository, open func(context.Context, name.Repository, []remote.Option) (layerBlob, error)) *sourcesBlob {
	return &sourcesBlob{open: open, cur: b, repos: []string{repo.Name()}}
}

// add notes another repository the layer can be read from.
func (s *sourcesBlob) add(repo name.Repository, opts []remote.Option) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.repos, repo.Name()) || len(s.repos) >= maxSources {
		return
	}
	s.repos = append(s.repos, repo.Name())
	s.next = append(s.next, altSource{repo: repo, opts: opts})
}

func (s *sourcesBlob) current() layerBlob {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// fallBack gives up failed (unless another read already has) for the next
// repository that opens; false when none is left.
func (s *sourcesBlob) fallBack(ctx context.Context, failed layerBlob, err error) (layerBlob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != failed {
		return s.cur, true
	}
	for len(s.next) > 0 {
		alt := s.next[0]
		s.next = s.next[1:]
		b, oerr := s.open(ctx, alt.repo, alt.opts)
		if oerr != nil {
			slog.WarnContext(ctx, "fs: another repository of the layer cannot be read either", "repository", alt.repo.Name(), "error", oerr)
			continue
		}
		slog.WarnContext(ctx, "fs: the layer's repository does not have it; reading it from another", "repository", alt.repo.Name(), "error", err)
		s.spent = append(s.spent, s.cur)
		s.cur = b
		return b, true
	}
	return nil, false
}

// missing says whether err is a registry's 404 for the blob.
func missing(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && errdefs.IsNotFound(err)
}

func (s *sourcesBlob) Size() int64 { return s.current().Size() }

func (s *sourcesBlob) FetchEach(ctx context.Context, ranges []remote.Range, got func(i int, data []byte)) error {
	b := s.current()
	done := make([]bool, len(ranges))
	idx := make([]int, len(ranges)) // ranges' indexes in the call b serves
	for i := range idx {
		idx[i] = i
	}
	rest := ranges
	for {
		err := b.FetchEach(ctx, rest, func(j int, data []byte) {
			done[idx[j]] = true
			got(idx[j], data)
		})
		if !missing(ctx, err) {
			return err
		}
		nb, ok := s.fallBack(ctx, b, err)
		if !ok {
			return err
		}
		b, rest, idx = nb, nil, idx[:0]
		for i, r := range ranges {
			if !done[i] {
				rest, idx = append(rest, r), append(idx, i)
			}
		}
	}
}

func (s *sourcesBlob) ReaderAt(ctx context.Context) io.ReaderAt {
	return sourcesReaderAt{s: s, ctx: ctx}
}

type sourcesReaderAt struct {
	s   *sourcesBlob
	ctx context.Context
}

func (r sourcesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	b := r.s.current()
	for {
		n, err := b.ReaderAt(r.ctx).ReadAt(p, off)
		if n > 0 || !missing(r.ctx, err) {
			return n, err
		}
		nb, ok := r.s.fallBack(r.ctx, b, err)
		if !ok {
			return n, err
		}
		b = nb
	}
}

// Stats adds up what every source this layer was read from did.
func (s *sourcesBlob) Stats() remote.Stats {
	s.mu.Lock()
	all := append(slices.Clone(s.spent), s.cur)
	s.mu.Unlock()
	var st remote.Stats
	for _, b := range all {
		o := b.Stats()
		st.Requests += o.Requests
		st.BytesFetched += o.BytesFetched
		st.Retries += o.Retries
		st.Errors += o.Errors
	}
	return st
}

func (s *sourcesBlob) Close() error {
	s.mu.Lock()
	all := append(slices.Clone(s.spent), s.cur)
	s.mu.Unlock()
	var first error
	for _, b := range all {
		if err := b.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
