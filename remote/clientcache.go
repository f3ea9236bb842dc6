package remote

import (
	"context"
	"net/http"
	"strings"
	"sync"
)

// ClientCache shares registry clients between operations on the same
// repository: the ping, the token exchange and the open connections of one
// Resolve serve every BlobReader of that image after it. On a link with
// 20 ms of latency each handshake saved is two round trips per layer.
// Tokens that expire are renewed by the client when a request is refused.
type ClientCache struct {
	mu      sync.Mutex
	clients map[string]*client
}

// NewClientCache returns an empty cache, to be passed to every operation
// with WithClientCache.
func NewClientCache() *ClientCache {
	return &ClientCache{clients: map[string]*client{}}
}

// WithClientCache makes operations reuse clients from c. Default: none,
// every operation makes its own handshake.
func WithClientCache(c *ClientCache) Option {
	return func(o *options) { o.clients = c }
}

// get returns the cached client for repo and scopes, or makes one with
// newClient and keeps it until the registry refuses its credentials.
func (c *ClientCache) get(ctx context.Context, key string, make func() (*client, error)) (*client, error) {
	c.mu.Lock()
	cl, ok := c.clients[key]
	c.mu.Unlock()
	if ok {
		return cl, nil
	}
	cl, err := make()
	if err != nil {
		return nil, err
	}
	cl.registry.Transport = &forgetRefused{next: cl.registry.Transport, forget: func() { c.forget(key, cl) }}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.clients[key]; ok {
		return prev, nil // another caller won the race; share its client
	}
	c.clients[key] = cl
	return cl, nil
}

// forget drops cl, cached under key, so that the next operation resolves
// the credentials again and makes a new handshake.
func (c *ClientCache) forget(key string, cl *client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clients[key] == cl {
		delete(c.clients, key)
	}
}

// forgetRefused forgets its cached client when the registry refuses a
// request for its credentials (401, or 403 for credentials without the
// right), after ggcr's transport has renewed a token and tried again: the
// credentials it holds were resolved once, and without it a mount that
// failed before `docker login`, or with a password since changed, would
// fail the same way until the daemon restarts. The refused request itself
// still fails; the next one resolves the credentials anew.
type forgetRefused struct {
	next   http.RoundTripper
	forget func()
}

func (f *forgetRefused) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.next.RoundTrip(req)
	if err == nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		f.forget()
	}
	return resp, err
}

func clientKey(repo string, scopes []string) string {
	return repo + "|" + strings.Join(scopes, ",")
}
