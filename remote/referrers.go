package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// Referrers lists the manifests whose subject is the manifest subject in
// repo: the registry's referrers API answer when it has the API, else the
// index the referrers tag scheme keeps under the tag "ALG-HEX" (empty
// when there is no such tag), as OCI distribution 1.1 says and ggcr's
// Referrers does. Unlike ggcr's, it asks for the tag at the same time as
// the API, so a registry without the API costs no second round trip. The
// listing is untrusted: callers check what they load from it.
func Referrers(ctx context.Context, repo name.Repository, subject digest.Digest, opts ...Option) (*v1.IndexManifest, error) {
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("%w: subject %q: %w", ErrInvalidReference, subject, err)
	}
	o := makeOptions(opts...)
	c, err := newClient(ctx, repo, o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.requestTimeout)
	defer cancel()
	type answer struct {
		m   *rawManifest
		err error
	}
	tag := make(chan answer, 1)
	go func() {
		m, err := c.fetchManifest(ctx, o, fallbackTag(subject), "")
		tag <- answer{m, err}
	}()
	body, ok, err := c.referrersAPI(ctx, subject)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", c.repo, subject, err)
	}
	if !ok {
		a := <-tag
		switch {
		case errors.Is(a.err, errdefs.ErrNotFound):
			return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil
		case a.err != nil:
			return nil, fmt.Errorf("referrers of %s@%s (tag scheme): %w", c.repo, subject, a.err)
		}
		body = a.m.bytes
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", c.repo, subject, err)
	}
	return idx, nil
}

// referrersAPI asks the registry's referrers API; ok is false when the
// registry has none (it answers 404, 400 or 406, or with something other
// than an OCI index, as ggcr takes it).
func (c *client) referrersAPI(ctx context.Context, subject digest.Digest) (body []byte, ok bool, err error) {
	u := c.url("referrers", subject.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, false, &Error{Method: http.MethodGet, URL: redactURL(u), Err: err}
	}
	req.Header.Set("Accept", string(types.OCIImageIndex))
	resp, err := c.registry.Do(req)
	if err != nil {
		return nil, false, transportError(ctx, req, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusBadRequest, http.StatusNotAcceptable:
		return nil, false, nil
	default:
		return nil, false, statusError(resp)
	}
	if mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";"); strings.TrimSpace(mt) != string(types.OCIImageIndex) {
		return nil, false, nil
	}
	body, err = readLimited(ctx, resp, maxManifestSize)
	return body, err == nil, err
}

// fallbackTag is the referrers tag scheme's tag for subject: its
// algorithm, a dash and its hex, at most 128 characters.
func fallbackTag(subject digest.Digest) string {
	t := subject.Algorithm().String() + "-" + subject.Encoded()
	return t[:min(len(t), 128)]
}
