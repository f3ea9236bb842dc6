package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// Client talks to a daemon over its control socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Status returns the daemon's status; it fails when no daemon answers.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Mount asks the daemon to mount an image.
func (c *Client) Mount(ctx context.Context, req MountRequest) (*Mount, error) {
	var m Mount
	return &m, c.do(ctx, http.MethodPost, "/v1/mounts", req, &m)
}

// MountProgress is Mount, with progress lines (layers read whole to index
// them) handed to progress as they come.
func (c *Client) MountProgress(ctx context.Context, req MountRequest, progress func(string)) (*Mount, error) {
	return stream[Mount](ctx, c, "/v1/mounts?progress=true", req, progress)
}

// Unmount asks the daemon to unmount the image at dir. A writable mount
// with uncommitted changes is refused unless discard is set, which drops
// them.
func (c *Client) Unmount(ctx context.Context, dir string, discard bool) error {
	q := url.Values{"dir": {dir}}
	if discard {
		q.Set("discard", "true")
	}
	return c.do(ctx, http.MethodDelete, "/v1/mounts?"+q.Encode(), nil, nil)
}

// Changes lists what changed in the writable mount at dir.
func (c *Client) Changes(ctx context.Context, dir string) ([]Change, error) {
	var cs []Change
	return cs, c.do(ctx, http.MethodGet, "/v1/changes?dir="+url.QueryEscape(dir), nil, &cs)
}

// Commit asks for the changes of a writable mount to become a new image;
// progress is called with each progress line.
func (c *Client) Commit(ctx context.Context, req CommitRequest, progress func(string)) (*CommitResult, error) {
	return stream[CommitResult](ctx, c, "/v1/commits", req, progress)
}

// Push asks for an image kept in the store to be pushed; progress is
// called with each progress line.
func (c *Client) Push(ctx context.Context, req PushRequest, progress func(string)) (*CommitResult, error) {
	return stream[CommitResult](ctx, c, "/v1/pushes", req, progress)
}

// Resolve describes an image without mounting it, and keeps its manifest
// and config in the daemon's store.
func (c *Client) Resolve(ctx context.Context, req ResolveRequest) (*Resolved, error) {
	var res Resolved
	return &res, c.do(ctx, http.MethodPost, "/v1/resolve", req, &res)
}

// Index asks for the indexes of REF's gzip and tar layers to be made and
// pushed next to it; progress is called with each progress line.
func (c *Client) Index(ctx context.Context, req IndexRequest, progress func(string)) (*IndexResult, error) {
	return stream[IndexResult](ctx, c, "/v1/indexes", req, progress)
}

// stream posts req and reads the Event lines of the answer.
func stream[T any](ctx context.Context, c *Client, path string, req any, progress func(string)) (*T, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://strata"+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err() // cut short here (^C): the caller says so
		}
		return nil, fmt.Errorf("strata daemon at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nil, responseError(resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev Event[T]
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				// The connection ended: the daemon stopped or died (its
				// supervisor starts it again). What it was doing was cut
				// short as a whole: a commit or push publishes its
				// manifest last, so nothing of it is out.
				return nil, fmt.Errorf("strata daemon: it stopped before answering (a crash or a stop; a supervised daemon is started again): what was asked was cut short, and may be asked again: %w", err)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err() // cut short here (^C): the caller says so
			}
			return nil, fmt.Errorf("strata daemon: the answer ended early: %w", err)
		}
		switch {
		case ev.Error != "":
			return nil, errors.New(ev.Error)
		case ev.Result != nil:
			return ev.Result, nil
		case progress != nil:
			progress(ev.Progress)
		}
	}
}

// StartRun announces a command about to run in the writable mount at
// req.Dir and returns what running it needs.
func (c *Client) StartRun(ctx context.Context, req RunRequest) (*RunInfo, error) {
	var info RunInfo
	return &info, c.do(ctx, http.MethodPost, "/v1/runs", req, &info)
}

// Snapshots returns the layers the containerd snapshotter serves lazily.
func (c *Client) Snapshots(ctx context.Context) ([]ContainerdSnapshot, error) {
	var ss []ContainerdSnapshot
	return ss, c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &ss)
}

// List returns the daemon's mounts.
func (c *Client) List(ctx context.Context) ([]Mount, error) {
	var ms []Mount
	return ms, c.do(ctx, http.MethodGet, "/v1/mounts", nil, &ms)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://strata"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // cut short here (^C): the caller says so
		}
		return fmt.Errorf("strata daemon at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return responseError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return nil
}

// responseError reads the daemon's error answer.
func responseError(resp *http.Response) error {
	var e apiError
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return errors.New(e.Error)
	}
	return fmt.Errorf("strata daemon: %s: %s", resp.Status, bytes.TrimSpace(b))
}

// Socket returns the control socket the client talks to.
func (c *Client) Socket() string { return c.socket }

// Handover asks the daemon to stop for a handover: it leaves every mount
// to the next daemon its supervisor (or systemd) starts. It returns the
// status of the daemon that stops.
func (c *Client) Handover(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodPost, "/v1/handover", nil, &st)
	return st, err
}
