package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// untrustedCertificate says whether err is a failure to verify a server's
// TLS certificate.
func untrustedCertificate(err error) bool {
	var verr *tls.CertificateVerificationError
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var ierr x509.CertificateInvalidError
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &ierr)
}

// maxRedirects matches net/http's own limit; registries use one or two hops.
const maxRedirects = 10

// ParseReference parses ref the way docker does ("ubuntu" means
// index.docker.io/library/ubuntu:latest) and marks the registry insecure when
// its host was given to WithInsecureRegistries.
func ParseReference(ref string, opts ...Option) (name.Reference, error) {
	o := makeOptions(opts...)
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalidReference, ref, err)
	}
	if !o.isInsecureHost(r.Context().RegistryStr()) {
		return r, nil
	}
	r, err = name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalidReference, ref, err)
	}
	return r, nil
}

// ParsePushReference parses ref as ParseReference does, as a place to
// push a new image to: a tag (the default "latest" when none is given)
// that the distribution spec accepts. A digest is refused, since a new
// image's digest is known only once it is made, and so is a tag a
// registry would refuse only after every blob was uploaded (go-
// containerregistry lets one start with '.' or '-').
func ParsePushReference(ref string, opts ...Option) (name.Reference, error) {
	r, err := ParseReference(ref, opts...)
	if err != nil {
		return nil, err
	}
	tag, ok := r.(name.Tag)
	if !ok {
		return nil, fmt.Errorf("%w: %q names a digest: a new image is pushed under a tag (its digest is known once it is made)", ErrInvalidReference, ref)
	}
	if t := tag.TagStr(); !validTag.MatchString(t) {
		return nil, fmt.Errorf("%w: %q: tag %q must start with a letter, a digit or '_', then hold only those, '.' and '-', 128 characters at most", ErrInvalidReference, ref, t)
	}
	return r, nil
}

// validTag is the distribution spec's tag.
var validTag = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// RemoteOptions returns ggcr remote options with the same credentials,
// insecure hosts, transport, user agent and platform as opts, so that other
// packages push and pull (remote.Write, remote.Image) exactly as this one
// reads. References passed to ggcr must come from ParseReference for the
// insecure setting to take effect.
func RemoteOptions(ctx context.Context, opts ...Option) []ggcrremote.Option {
	o := makeOptions(opts...)
	ro := []ggcrremote.Option{
		ggcrremote.WithContext(ctx),
		ggcrremote.WithAuthFromKeychain(o.keychain),
		ggcrremote.WithTransport(o.baseTransport()),
		ggcrremote.WithPlatform(o.platform),
	}
	if o.userAgent != "" {
		ro = append(ro, ggcrremote.WithUserAgent(o.userAgent))
	}
	return ro
}

// PullOptions is RemoteOptions for reading from repo. With a client
// cache (WithClientCache), ggcr is given the transport of repo's cached
// client, whose handshake (a ping and a token with pull scope) was made
// once, by Resolve say: ggcr then does not ping the registry again. Only
// for reads: a push needs push scope, which that token lacks.
//
// ggcr skips its handshake only for the transport.Wrapper the handshake
// returned, not for the cache's wrapper around it (forgetRefused), so it
// gets the handshake's own: a refusal of ggcr's reads does not make the
// cache forget the client, the operation's own requests on it (Resolve's,
// made just before) do.
func PullOptions(ctx context.Context, repo name.Repository, opts ...Option) []ggcrremote.Option {
	ro := RemoteOptions(ctx, opts...)
	o := makeOptions(opts...)
	if o.clients == nil {
		return ro
	}
	c, err := newClient(ctx, repo, o)
	if err != nil {
		return ro // ggcr makes its own handshake, and reports its failure
	}
	return append(ro, ggcrremote.WithTransport(c.authed))
}

// repository re-creates repo's registry as insecure when it was listed by
// WithInsecureRegistries; a name.Repository from elsewhere may not say so.
func (o *options) repository(repo name.Repository) (name.Repository, error) {
	if !o.isInsecureHost(repo.RegistryStr()) {
		return repo, nil
	}
	reg, err := name.NewRegistry(repo.RegistryStr(), name.Insecure, name.WeakValidation)
	if err != nil {
		return name.Repository{}, fmt.Errorf("%w: %w", ErrInvalidReference, err)
	}
	repo.Registry = reg
	return repo, nil
}

// baseTransport is the transport every request finally goes through: the
// user's (or the default) one, with certificate checks off only for hosts
// listed as insecure.
func (o *options) baseTransport() http.RoundTripper {
	if len(o.insecure) == 0 {
		return o.transport
	}
	t, ok := o.transport.(*http.Transport)
	if !ok {
		// A custom RoundTripper's TLS settings are its owner's business.
		return o.transport
	}
	skip := t.Clone()
	if skip.TLSClientConfig == nil {
		skip.TLSClientConfig = &tls.Config{}
	}
	skip.TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // only for hosts the user listed as insecure
	return &hostRouter{o: o, secure: t, insecure: skip}
}

// hostRouter sends requests for insecure-listed hosts through a transport
// that skips TLS verification and everything else through the normal one.
type hostRouter struct {
	o                *options
	secure, insecure http.RoundTripper
}

func (h *hostRouter) RoundTrip(req *http.Request) (*http.Response, error) {
	if h.o.isInsecureHost(req.URL.Host) {
		return h.insecure.RoundTrip(req)
	}
	return h.secure.RoundTrip(req)
}

// client holds the two HTTP clients of one repository.
//
// registry carries credentials (ggcr's bearer/basic transport) and follows
// redirects, stripping Authorization whenever a hop leaves the registry host:
// net/http keeps it for the same host name on another port, which for blob
// stores behind the same name would leak a token.
//
// direct has no credentials at all; it is for blob-store URLs a registry
// redirected to, which are authorized by their own (signed) query string.
type client struct {
	repo     name.Repository
	registry *http.Client
	direct   *http.Client
	// authed is the handshake's transport, which registry's wraps.
	authed http.RoundTripper
}

func newClient(ctx context.Context, repo name.Repository, o *options, scopes ...string) (*client, error) {
	if o.clients == nil {
		return dialClient(ctx, repo, o, scopes...)
	}
	key := clientKey(repo.String(), scopes) + "|insecure=" + strconv.FormatBool(o.isInsecureHost(repo.RegistryStr()))
	return o.clients.get(ctx, key, func() (*client, error) {
		// The handshake must outlive the operation that happens to make it.
		return dialClient(context.WithoutCancel(ctx), repo, o, scopes...)
	})
}

// dialClient pings the registry and makes the clients of one repository.
func dialClient(ctx context.Context, repo name.Repository, o *options, scopes ...string) (*client, error) {
	repo, err := o.repository(repo)
	if err != nil {
		return nil, err
	}
	if o.requestTimeout > 0 {
		// A registry that takes the connection and never answers
		// must not hold a mount (or a daemon's start) for good.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.requestTimeout)
		defer cancel()
	}
	base := transport.NewUserAgent(o.baseTransport(), o.userAgent)
	auth, err := authn.Resolve(ctx, o.keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("resolving credentials for %s: %w", repo.RegistryStr(), err)
	}
	if len(scopes) == 0 {
		scopes = []string{repo.Scope(transport.PullScope)}
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, base, scopes)
	if err != nil {
		return nil, handshakeError(repo, err)
	}
	host := repo.RegistryStr()
	return &client{
		repo:   repo,
		authed: rt,
		registry: &http.Client{Transport: rt, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return errors.New("stopped after 10 redirects")
			}
			if req.URL.Host != host {
				req.Header.Del("Authorization")
			}
			return nil
		}},
		direct: &http.Client{Transport: base},
	}, nil
}

// url builds a registry API URL. The scheme is a guess that ggcr's transport
// corrects to what the ping found (http for insecure/local registries).
func (c *client) url(kind, ref string) *url.URL {
	return &url.URL{
		Scheme: c.repo.Scheme(),
		Host:   c.repo.RegistryStr(),
		Path:   fmt.Sprintf("/v2/%s/%s/%s", c.repo.RepositoryStr(), kind, ref),
	}
}

// redirected reports whether resp came from somewhere other than the
// registry, i.e. a blob store whose URL is worth remembering.
func (c *client) redirected(resp *http.Response) (*url.URL, bool) {
	if resp.Request == nil || resp.Request.URL == nil {
		return nil, false
	}
	u := resp.Request.URL
	if u.Host == c.repo.RegistryStr() {
		return nil, false
	}
	return u, true
}

// handshakeError adds the errdefs class of a failed ping or token exchange
// (ggcr reports those as *transport.Error) so callers need not know ggcr.
func handshakeError(repo name.Repository, err error) error {
	err = redactError(err)
	if untrustedCertificate(err) {
		// Said first: a loopback registry's plain-HTTP retry, whose
		// 400 would otherwise class the failure, is beside the point.
		return fmt.Errorf("authenticating to %s: the registry's TLS certificate is not trusted "+
			"(add its CA to the system's trusted certificates, or name a file of them in SSL_CERT_FILE "+
			"in the daemon's environment; --insecure skips the check): %w", repo.RegistryStr(), err)
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		if class := statusClass(terr.StatusCode); class != nil {
			return fmt.Errorf("authenticating to %s: %w: %w", repo.RegistryStr(), class, err)
		}
	}
	return fmt.Errorf("authenticating to %s: %w", repo.RegistryStr(), err)
}
