package remote

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// setForeign keeps the blob URLs of the options that may be fetched for a
// blob of repo, and logs why the others are not.
func (r *BlobReader) setForeign(repo name.Repository) {
	// Listed insecure, or a local registry, which go-containerregistry
	// reaches over plain HTTP (localhost, 127.0.0.1, *.local).
	insecure := r.o.isInsecureHost(repo.RegistryStr()) || repo.Scheme() == "http"
	for _, s := range r.o.blobURLs {
		u, err := url.Parse(s)
		if err == nil {
			err = foreignURLError(u, insecure)
		}
		if err != nil {
			slog.Warn("a url of the layer is not used", "blob", r.digest, "url", redactString(s), "why", err)
			continue
		}
		r.foreign = append(r.foreign, u)
	}
	if len(r.foreign) == 0 {
		return
	}
	r.foreignClient = &http.Client{
		Transport: transport.NewUserAgent(r.o.baseTransport(), r.o.userAgent), // no credentials, as the client's direct one
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return errors.New("stopped after 10 redirects")
			}
			return foreignURLError(req.URL, insecure)
		},
	}
}

// foreignURLError says why u, a url of a layer descriptor (or where one
// redirected), may not be fetched. Manifests are untrusted: their urls
// could point the daemon at services of the machine's own network
// (request forgery), so as go-containerregistry does for foreign layers,
// an image from a registry reached over verified TLS may name only https
// URLs whose host is not a loopback, private, link-local or unspecified
// address. An image from an insecure or local registry (--insecure,
// insecure_registries, localhost: development, tests) may name any http
// or https URL. Host names are not resolved here: that check would race with the
// connection's own lookup.
func foreignURLError(u *url.URL, insecure bool) error {
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("scheme %q: only https (or http from an insecure registry)", u.Scheme)
	case u.Host == "" || u.User != nil:
		return errors.New("no host, or credentials in the URL")
	case insecure:
		return nil
	case u.Scheme == "http":
		return errors.New("plain http from a registry reached over TLS")
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsMulticast() {
			return fmt.Errorf("host %s is a local or private address", ip)
		}
	}
	return nil
}

// redactString is redactURL for a URL not parsed yet.
func redactString(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	return redactURL(u)
}
