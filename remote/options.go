package remote

import (
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

// Defaults, written once so that the option docs and the code cannot drift.
const (
	DefaultMaxConcurrency = 16
	DefaultRequestTimeout = 30 * time.Second
	DefaultRetryAttempts  = 5
	DefaultRetryBase      = 100 * time.Millisecond
)

// Option configures a remote operation (Resolve, NewBlobReader, RemoteOptions,
// ParseReference). Options that do not apply to an operation are ignored.
type Option func(*options)

type options struct {
	keychain       authn.Keychain
	insecure       map[string]bool // registry "host[:port]" → allowed plain HTTP / unverified TLS
	platform       v1.Platform
	transport      http.RoundTripper
	userAgent      string
	maxConcurrency int
	requestTimeout time.Duration
	retryAttempts  int
	retryBase      time.Duration
	spoolDir       string
	blobURLs       []string
	clients        *ClientCache
	onManifest     func(repo name.Repository, manifest digest.Digest, layers []Layer)
	localBlob      func(digest.Digest) ([]byte, bool)
	deferHandshake bool
}

func makeOptions(opts ...Option) *options {
	o := &options{
		keychain:       authn.DefaultKeychain,
		insecure:       map[string]bool{},
		platform:       hostPlatform(),
		maxConcurrency: DefaultMaxConcurrency,
		requestTimeout: DefaultRequestTimeout,
		retryAttempts:  DefaultRetryAttempts,
		retryBase:      DefaultRetryBase,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(o)
		}
	}
	if o.transport == nil {
		o.transport = defaultTransport()
	}
	if o.spoolDir == "" {
		o.spoolDir = os.TempDir()
	}
	return o
}

// defaultTransport clones ggcr's tuned transport so that changes made here
// (TLS settings for insecure hosts) never leak into other users of it.
func defaultTransport() http.RoundTripper {
	if t, ok := ggcrremote.DefaultTransport.(*http.Transport); ok {
		return t.Clone()
	}
	return http.DefaultTransport.(*http.Transport).Clone()
}

// hostPlatform is the platform this process runs on. Strata only mounts on
// Linux, but the OS is taken from the runtime so tests on other hosts match
// what they would pull.
func hostPlatform() v1.Platform {
	p := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if p.Architecture == "arm" {
		// Go's GOARM is not visible at run time; v7 is what nearly every arm
		// image index lists and what containerd assumes by default.
		p.Variant = "v7"
	}
	return p
}

// WithKeychain sets where credentials come from.
// Default: authn.DefaultKeychain (docker config.json and credential helpers).
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) {
		if k != nil {
			o.keychain = k
		}
	}
}

// WithInsecureRegistries allows plain HTTP, and TLS without certificate
// verification, for these registry hosts ("host" or "host:port").
// Default: none (ggcr already lets localhost and 127.0.0.1 use HTTP).
// Unverified TLS needs the base transport to be an *http.Transport.
func WithInsecureRegistries(hosts ...string) Option {
	return func(o *options) {
		for _, h := range hosts {
			if h = strings.TrimSpace(h); h != "" {
				o.insecure[h] = true
			}
		}
	}
}

// WithPlatform chooses which manifest Resolve takes from an index.
// Default: the host's GOOS/GOARCH (variant v7 on arm).
func WithPlatform(p v1.Platform) Option {
	return func(o *options) { o.platform = p }
}

// WithTransport sets the base HTTP transport under auth, retries and
// redirects. Default: a clone of ggcr's remote.DefaultTransport.
// WithManifestHook makes Resolve call fn with the image manifest it chose
// (its repository, digest and layers), before it fetches the config: a
// caller can start what needs only those (looking for the image's
// referrers) a round trip sooner. fn must return at once.
func WithManifestHook(fn func(repo name.Repository, manifest digest.Digest, layers []Layer)) Option {
	return func(o *options) { o.onManifest = fn }
}

// WithDeferredHandshake makes NewBlobReader make no handshake (ping,
// credentials, token): the first fetch makes it, and the next fetch again
// after one that failed. A reader whose bytes are all cached elsewhere (a
// mounted layer restored or taken over by a new daemon) then needs no
// registry at all, and one that is down fails the fetches that need it,
// not the reader.
func WithDeferredHandshake() Option {
	return func(o *options) { o.deferHandshake = true }
}

// WithLocalBlobs makes Resolve take an image config from get, a store
// of blobs by digest, when it holds it (its bytes verified against the
// manifest's descriptor as fetched ones are), instead of asking the
// registry: a tag's manifest must be asked for, the config it names need
// not be.
func WithLocalBlobs(get func(digest.Digest) ([]byte, bool)) Option {
	return func(o *options) { o.localBlob = get }
}

func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) { o.transport = rt }
}

// WithUserAgent prefixes the User-Agent header of every request.
// Default: ggcr's own user agent only.
func WithUserAgent(ua string) Option {
	return func(o *options) { o.userAgent = ua }
}

// WithMaxConcurrency bounds concurrent HTTP requests per BlobReader.
// Default: 16. Values below 1 mean 1.
func WithMaxConcurrency(n int) Option {
	return func(o *options) { o.maxConcurrency = max(n, 1) }
}

// WithRequestTimeout bounds one logical read (or manifest/config fetch)
// including all its retries. Default: 30s. Values <= 0 keep the default.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.requestTimeout = d
		}
	}
}

// WithRetry sets the number of attempts per logical request and the base of
// the exponential backoff (jittered, doubled per attempt).
// Default: 5 attempts, 100ms base. maxAttempts below 1 means 1 (no retry).
func WithRetry(maxAttempts int, base time.Duration) Option {
	return func(o *options) {
		o.retryAttempts = max(maxAttempts, 1)
		o.retryBase = max(base, 0)
	}
}

// WithSpoolDir is where a BlobReader keeps a whole blob when the server
// ignores Range requests. The file is unlinked as soon as it is created, so
// nothing is left behind even on a crash. Default: os.TempDir().
func WithSpoolDir(dir string) Option {
	return func(o *options) { o.spoolDir = dir }
}

// WithBlobURLs gives a BlobReader the other places its blob may be read
// from: the urls of its descriptor (image-spec descriptor.md), which
// foreign and non-distributable layers carry because the registry need
// not hold them. They are tried, in order, only when the registry answers
// that it has no such blob, and the first that serves it is kept. They
// come from an untrusted manifest, so only some are taken (see
// foreignURLError), they are sent no credentials, and what they serve is
// checked like any blob bytes (chunk digests, or the blob's own digest
// when read whole).
func WithBlobURLs(urls ...string) Option {
	return func(o *options) { o.blobURLs = append(o.blobURLs, urls...) }
}

// isInsecureHost reports whether host ("host:port" or "host") was listed by
// WithInsecureRegistries. A listing without a port matches every port.
func (o *options) isInsecureHost(host string) bool {
	if o.insecure[host] {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		return o.insecure[h]
	}
	return false
}

// IsInsecure reports whether opts let host be reached over plain HTTP or
// with unverified TLS (see WithInsecureRegistries).
func IsInsecure(host string, opts ...Option) bool {
	o := &options{insecure: map[string]bool{}}
	for _, opt := range opts {
		if opt != nil {
			opt(o)
		}
	}
	return o.isInsecureHost(host)
}
