package remote

import (
	"context"
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
// newClient and keeps it.
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.clients[key]; ok {
		return prev, nil // another caller won the race; share its client
	}
	c.clients[key] = cl
	return cl, nil
}

func clientKey(repo string, scopes []string) string {
	return repo + "|" + strings.Join(scopes, ",")
}
