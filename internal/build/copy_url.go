package build

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// download writes ADD URL s to its destination.
func (c *copier) download(ctx context.Context, s *copySource) error {
	var body io.Reader
	var lastModified string
	if dl, ok := c.Downloads.get(s.url); ok {
		// What the cache key was made of.
		f, err := os.Open(dl.path)
		if err != nil {
			return err
		}
		defer f.Close()
		body, lastModified = f, dl.lastModified
	} else {
		resp, err := httpGet(ctx, s.url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, lastModified = resp.Body, resp.Header.Get("Last-Modified")
	}
	dir, name, err := c.target(false, s.base, unix.S_IFREG|0o600)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	m := entryMeta{uid: c.UID, gid: c.GID, mode: 0o600, mtime: unix.Timespec{}}
	if c.mode != nil {
		m.mode = *c.mode
	}
	if c.modeSet != nil {
		m.mode = unixMode(c.modeSet.Apply(0o600))
	}
	if t, err := http.ParseTime(lastModified); err == nil {
		m.mtime = unix.NsecToTimespec(t.UnixNano())
	}
	var d digest.Digester
	if c.Checksum != "" {
		d = c.Checksum.Algorithm().Digester()
		body = io.TeeReader(body, d.Hash())
	}
	if err := writeRegular(dir, name, body, m); err != nil {
		return fmt.Errorf("%s: %w", redactURL(s.url), err)
	}
	if d != nil && d.Digest() != c.Checksum {
		unix.Unlinkat(dir, name, 0)
		return fmt.Errorf("%w: %s has digest %s, want %s", ErrChecksum, redactURL(s.url), d.Digest(), c.Checksum)
	}
	c.count++
	return nil
}

// httpGet GETs rawURL, following redirects, and fails on a status other
// than 2xx.
func httpGet(ctx context.Context, rawURL string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: GET %s: %s", ErrDownload, redactURL(rawURL), resp.Status)
	}
	return resp, nil
}

func redactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// urlFileName is the name an ADD URL takes in a directory: the last
// element of its path, as BuildKit names it.
func urlFileName(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "__unnamed__"
	}
	switch base := path.Base(u.Path); base {
	case ".", "..", "/", "":
		return "__unnamed__"
	default:
		return base
	}
}
