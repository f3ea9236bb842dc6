package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// Proxy is a running loopback reverse proxy. All methods are safe for
// concurrent use.
type Proxy struct {
	target   *url.URL
	listener net.Listener
	server   *http.Server
	rp       *httputil.ReverseProxy
	client   *http.Transport
	log      *slog.Logger
	link     link
	stats    recorder
	fault    struct {
		sync.Mutex
		f Fault
	}
	inflight  sync.WaitGroup
	stop      chan struct{}
	closeOnce sync.Once
	served    chan struct{}
}

// Option configures New.
type Option func(*Proxy)

// WithProfile sets the initial link profile (default ProfileLo).
func WithProfile(p Profile) Option { return func(px *Proxy) { px.link.profile = p } }

// WithLogger logs upstream errors to l (default: discarded, since tests that
// cancel requests on purpose would otherwise print noise).
func WithLogger(l *slog.Logger) Option { return func(px *Proxy) { px.log = l } }

// New starts a proxy to target ("http://127.0.0.1:port") listening on a
// free 127.0.0.1 port.
func New(target string, opts ...Option) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("proxy: target %q is not an http://host:port URL", target)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: listen: %w", err)
	}
	p := &Proxy{
		target:   u,
		listener: l,
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		stop:     make(chan struct{}),
		served:   make(chan struct{}),
	}
	p.link.profile = ProfileLo
	for _, opt := range opts {
		opt(p)
	}
	p.client = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		DisableCompression:  true, // byte counts must be what the registry sent
		MaxIdleConnsPerHost: 64,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      p.client,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
	p.server = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		defer close(p.served)
		_ = p.server.Serve(l) // returns ErrServerClosed on Close
	}()
	return p, nil
}

// URL is "http://127.0.0.1:port".
func (p *Proxy) URL() string { return "http://" + p.Host() }

// Host is "127.0.0.1:port": use it as the registry part of image refs.
func (p *Proxy) Host() string { return p.listener.Addr().String() }

// SetProfile changes the link for requests and bytes from now on.
func (p *Proxy) SetProfile(pr Profile) { p.link.setProfile(pr) }

// SetFault installs f, consulted for every request from now on; nil clears.
func (p *Proxy) SetFault(f Fault) {
	p.fault.Lock()
	defer p.fault.Unlock()
	p.fault.f = f
}

func (p *Proxy) currentFault() Fault {
	p.fault.Lock()
	defer p.fault.Unlock()
	return p.fault.f
}

// Stats returns a snapshot of the counters and the request log.
func (p *Proxy) Stats() Stats { return p.stats.snapshot() }

// ResetStats zeroes the counters and empties the log. Requests in flight
// keep counting their remaining bytes into the new counters.
func (p *Proxy) ResetStats() { p.stats.reset() }

// Close stops listening, drops open connections, aborts shaping waits and
// waits (at most 10 s) for in-flight handlers to return.
func (p *Proxy) Close() error {
	var err error
	p.closeOnce.Do(func() {
		close(p.stop)
		err = p.server.Close()
		<-p.served
		done := make(chan struct{})
		go func() {
			p.inflight.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			err = errors.Join(err, errors.New("proxy: handlers still running 10s after Close"))
		}
		p.client.CloseIdleConnections()
	})
	return err
}

type proxyKey struct{}

// serve is the per-request pipeline: count, first half of the RTT, fault
// hook, forward. The request body (an upload) is read through a shaping,
// counting reader, the response goes through a shaping, counting writer.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.inflight.Add(1)
	defer p.inflight.Done()
	e := p.stats.begin(r)
	sw := &shapedWriter{ResponseWriter: w, p: p, entry: e, start: time.Now(), done: r.Context().Done()}
	defer func() { p.stats.end(e, time.Since(sw.start)) }()

	if !sleep(r.Context().Done(), p.stop, p.link.current().RTT/2) {
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), proxyKey{}, p))
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &shapedBody{ReadCloser: r.Body, p: p, entry: e, done: r.Context().Done()}
	}
	if f := p.currentFault(); f != nil && p.runFault(f, sw, r) {
		return
	}
	p.rp.ServeHTTP(sw, r)
}

// runFault lets f answer the request. The entry is marked Fault when f
// first touches the response (see shapedWriter), before the client can see
// it; marking only after f returned would let a client that has read an
// injected error, or seen a dropped connection, find a log entry that
// does not say so yet.
func (p *Proxy) runFault(f Fault, sw *shapedWriter, r *http.Request) bool {
	sw.inFault = true
	handled := f(sw, r)
	sw.inFault = false
	if handled {
		p.stats.markFault(sw.entry) // a Fault that answered nothing at all
	}
	return handled
}

// Forward sends r to the proxy's registry and writes the response to w. It
// is for Faults that alter a real response (see FlipByte); r must be the
// request the Fault was given.
func Forward(w http.ResponseWriter, r *http.Request) {
	p, ok := r.Context().Value(proxyKey{}).(*Proxy)
	if !ok {
		http.Error(w, "proxy.Forward called outside a proxy Fault", http.StatusInternalServerError)
		return
	}
	p.rp.ServeHTTP(w, r)
}

// rewrite keeps the client's Host header so the registry builds upload
// Location URLs that point back through the proxy.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(p.target)
	pr.Out.Host = pr.In.Host
}

// modifyResponse points absolute redirects to the registry back at the
// proxy, so no request escapes the counting.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil
	}
	u, err := url.Parse(loc)
	if err != nil || u.Host != p.target.Host {
		return nil
	}
	u.Host = p.Host()
	resp.Header.Set("Location", u.String())
	return nil
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away; nothing to answer
	}
	p.log.Warn("proxy: upstream", "method", r.Method, "path", r.URL.Path, "err", err)
	http.Error(w, "proxy: upstream: "+err.Error(), http.StatusBadGateway)
}
