package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

const (
	// maxManifestSize is what distribution (and containerd) accept; a larger
	// "manifest" is an attack or a mistake.
	maxManifestSize = 4 << 20
	// maxConfigSize bounds image configs, which are read into memory whole.
	maxConfigSize = 32 << 20
)

// acceptManifests lists what Resolve understands first, then schema 1 so
// that a registry holding only schema 1 answers with it and Resolve can say
// precisely why the image is refused instead of reporting "not found".
var acceptManifests = strings.Join([]string{
	string(types.OCIImageIndex),
	string(types.DockerManifestList),
	string(types.OCIManifestSchema1),
	string(types.DockerManifestSchema2),
	string(types.DockerManifestSchema1Signed),
	string(types.DockerManifestSchema1),
}, ", ")

// rawManifest is a manifest or index exactly as served, with its digest.
type rawManifest struct {
	bytes     []byte
	mediaType types.MediaType
	digest    digest.Digest
}

// fetchManifest GETs manifests/<ref>. When want is set (a digest reference or
// an index descriptor) the bytes must hash to it; otherwise a
// Docker-Content-Digest header, when present, must match.
func (c *client) fetchManifest(ctx context.Context, o *options, ref string, want digest.Digest) (*rawManifest, error) {
	var m *rawManifest
	ctx, cancel := context.WithTimeout(ctx, o.requestTimeout)
	defer cancel()
	err := o.retrier(nil).do(ctx, func(ctx context.Context) error {
		var err error
		m, err = c.getManifest(ctx, ref, want)
		return err
	})
	if err != nil {
		sep := ":" // a tag
		if strings.Contains(ref, ":") {
			sep = "@" // a digest
		}
		return nil, fmt.Errorf("manifest %s%s%s: %w", c.repo, sep, ref, err)
	}
	return m, nil
}

func (c *client) getManifest(ctx context.Context, ref string, want digest.Digest) (*rawManifest, error) {
	u := c.url("manifests", ref)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, &Error{Method: http.MethodGet, URL: redactURL(u), Err: err}
	}
	req.Header.Set("Accept", acceptManifests)
	resp, err := c.registry.Do(req)
	if err != nil {
		return nil, transportError(ctx, req, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp)
	}
	body, err := readLimited(ctx, resp, maxManifestSize)
	if err != nil {
		return nil, err
	}
	if want == "" {
		want = headerDigest(resp)
	}
	got := digest.Canonical.FromBytes(body)
	if want != "" {
		got = want.Algorithm().FromBytes(body)
	}
	if want != "" && got != want {
		return nil, responseError(resp, fmt.Errorf("%w: manifest should be %s, is %s", ErrDigestMismatch, want, got), false)
	}
	return &rawManifest{bytes: body, mediaType: manifestMediaType(resp, body), digest: got}, nil
}

// fetchBlob GETs a whole small blob (a config) and checks size and digest.
func (c *client) fetchBlob(ctx context.Context, o *options, dgst digest.Digest, size int64) ([]byte, error) {
	if size < 0 || size > maxConfigSize {
		return nil, fmt.Errorf("blob %s: %w: %d bytes (limit %d)", dgst, ErrTooLarge, size, maxConfigSize)
	}
	var body []byte
	ctx, cancel := context.WithTimeout(ctx, o.requestTimeout)
	defer cancel()
	err := o.retrier(nil).do(ctx, func(ctx context.Context) error {
		u := c.url("blobs", dgst.String())
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return &Error{Method: http.MethodGet, URL: redactURL(u), Err: err}
		}
		resp, err := c.registry.Do(req)
		if err != nil {
			return transportError(ctx, req, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return statusError(resp)
		}
		if body, err = readLimited(ctx, resp, size); err != nil {
			return err
		}
		if int64(len(body)) != size {
			return responseError(resp, fmt.Errorf("%w: got %d of %d bytes", ErrShortBody, len(body), size), true)
		}
		if got := dgst.Algorithm().FromBytes(body); got != dgst {
			return responseError(resp, fmt.Errorf("%w: blob should be %s, is %s", ErrDigestMismatch, dgst, got), false)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blob %s@%s: %w", c.repo, dgst, err)
	}
	return body, nil
}

// readLimited reads at most limit bytes of the body; more is ErrTooLarge, a
// cut-off body is a temporary ErrShortBody.
func readLimited(ctx context.Context, resp *http.Response, limit int64) ([]byte, error) {
	if resp.ContentLength > limit {
		return nil, responseError(resp, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, resp.ContentLength, limit), false)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, responseError(resp, ctx.Err(), false)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, responseError(resp, fmt.Errorf("%w: %w", ErrShortBody, err), true)
	case err != nil:
		return nil, responseError(resp, redactError(err), true)
	case int64(len(body)) > limit:
		return nil, responseError(resp, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit), false)
	}
	return body, nil
}

// headerDigest is the Docker-Content-Digest header, or "" when absent or
// unusable (some registries send garbage; the digest is only a cross-check
// when the reference is a tag).
func headerDigest(resp *http.Response) digest.Digest {
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return ""
	}
	return d
}

// manifestMediaType prefers the body's own mediaType field, which the digest
// covers, over the Content-Type header, which nothing verifies.
func manifestMediaType(resp *http.Response, body []byte) types.MediaType {
	var probe struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
	}
	if json.Unmarshal(body, &probe) == nil {
		if probe.MediaType != "" {
			return types.MediaType(probe.MediaType)
		}
		if probe.SchemaVersion == 1 {
			// Schema 1 has no mediaType field; name it so the refusal is clear.
			return types.DockerManifestSchema1
		}
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		return ""
	}
	return types.MediaType(mt)
}
