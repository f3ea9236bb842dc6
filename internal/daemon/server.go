package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/internal/commit"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/mounts", d.postMount)
	mux.HandleFunc("GET /v1/mounts", d.getMounts)
	mux.HandleFunc("DELETE /v1/mounts", d.deleteMount)
	mux.HandleFunc("GET /v1/changes", d.getChanges)
	mux.HandleFunc("POST /v1/runs", d.postRun)
	mux.HandleFunc("POST /v1/commits", d.postCommit)
	mux.HandleFunc("POST /v1/resolve", d.postResolve)
	mux.HandleFunc("POST /v1/pushes", d.postPush)
	mux.HandleFunc("POST /v1/indexes", d.postIndex)
	mux.HandleFunc("GET /v1/status", d.getStatus)
	mux.HandleFunc("GET /v1/snapshots", d.getSnapshots)
	mux.HandleFunc("POST /v1/handover", d.postHandover)
	mux.Handle("GET /metrics", promhttp.Handler())
	// Profiles, for diagnosing the daemon; only root reaches the socket.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	return mux
}

func (d *Daemon) postMount(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errdefs.ErrInvalidArgument, err)
		return
	}
	if r.URL.Query().Get("progress") == "true" {
		// Progress lines while layers are read whole (gzip and tar
		// layers without an index), then the mount.
		streamEvents(w, r, func(progress func(string, ...any)) (*Mount, error) {
			ctx := fs.WithProgress(r.Context(), func(layer digest.Digest, done, total int64) {
				progress("layer %s: %d of %d MB read", layer.Encoded()[:12], done>>20, total>>20)
			})
			return d.images.mount(ctx, req)
		})
		return
	}
	m, err := d.images.mount(r.Context(), req)
	if err != nil {
		writeError(w, err, nil)
		return
	}
	writeJSON(w, http.StatusCreated, m)
}

func (d *Daemon) deleteMount(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := d.images.unmount(r.Context(), q.Get("dir"), q.Get("discard") == "true"); err != nil {
		writeError(w, err, nil)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) getMounts(w http.ResponseWriter, r *http.Request) {
	ms := d.images.list()
	for i := range ms {
		if !ms[i].Writable {
			continue
		}
		n, err := d.images.changeBytes(r.Context(), &ms[i])
		if err != nil {
			slog.WarnContext(r.Context(), "disk usage of a writable mount", "dir", ms[i].Dir, "error", err)
		}
		ms[i].ChangeBytes = n
	}
	writeJSON(w, http.StatusOK, ms)
}

func (d *Daemon) getChanges(w http.ResponseWriter, r *http.Request) {
	changes, err := d.images.changes(r.Context(), r.URL.Query().Get("dir"))
	if err != nil {
		writeError(w, err, nil)
		return
	}
	writeJSON(w, http.StatusOK, changes)
}

func (d *Daemon) postRun(w http.ResponseWriter, r *http.Request) {
	var req RunRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errdefs.ErrInvalidArgument, err)
		return
	}
	info, err := d.images.startRun(r.Context(), req)
	if err != nil {
		writeError(w, err, nil)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// postCommit streams the commit's progress as JSON lines, then its result
// or error. A client that goes away cancels the commit, which then
// publishes nothing.
func (d *Daemon) postCommit(w http.ResponseWriter, r *http.Request) {
	var req CommitRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errdefs.ErrInvalidArgument, err)
		return
	}
	streamEvents(w, r, func(progress func(string, ...any)) (*CommitResult, error) {
		res, err := d.images.commit(r.Context(), req, progress)
		if err != nil {
			slog.WarnContext(r.Context(), "commit failed", "dir", req.Dir, "ref", req.Ref, "error", err)
		}
		return res, err
	})
}

// postPush streams a push's progress as postCommit does.
func (d *Daemon) postPush(w http.ResponseWriter, r *http.Request) {
	var req PushRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errdefs.ErrInvalidArgument, err)
		return
	}
	streamEvents(w, r, func(progress func(string, ...any)) (*CommitResult, error) {
		res, err := d.images.push(r.Context(), req, progress)
		if err != nil {
			slog.WarnContext(r.Context(), "push failed", "image", req.Image, "ref", req.Ref, "error", err)
		}
		return res, err
	})
}

func (d *Daemon) postIndex(w http.ResponseWriter, r *http.Request) {
	var req IndexRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errdefs.ErrInvalidArgument, err)
		return
	}
	streamEvents(w, r, func(progress func(string, ...any)) (*IndexResult, error) {
		res, err := d.images.indexImage(r.Context(), req, progress)
		if err != nil {
			slog.WarnContext(r.Context(), "indexing failed", "ref", req.Ref, "error", err)
		}
		return res, err
	})
}

// streamEvents answers with fn's progress lines, then its result or error,
// as Event lines.
func streamEvents[T any](w http.ResponseWriter, r *http.Request, fn func(progress func(string, ...any)) (*T, error)) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex
	send := func(ev Event[T]) {
		mu.Lock()
		defer mu.Unlock()
		if err := enc.Encode(ev); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	progress := func(format string, args ...any) { send(Event[T]{Progress: fmt.Sprintf(format, args...)}) }
	res, err := fn(progress)
	if err != nil {
		send(Event[T]{Error: errorMessage(err)})
		return
	}
	send(Event[T]{Result: res})
}

func (d *Daemon) postResolve(w http.ResponseWriter, r *http.Request) {
	var req ResolveRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errdefs.ErrInvalidArgument, err)
		return
	}
	res, err := d.images.resolveImage(r.Context(), req)
	if err != nil {
		writeError(w, err, nil)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (d *Daemon) getSnapshots(w http.ResponseWriter, r *http.Request) {
	ss, err := d.containerdSnapshots(r.Context())
	if err != nil {
		writeError(w, err, nil)
		return
	}
	writeJSON(w, http.StatusOK, ss)
}

func (d *Daemon) getStatus(w http.ResponseWriter, r *http.Request) {
	cs := d.store.Chunks.Stats()
	writeJSON(w, http.StatusOK, Status{Root: d.cfg.Root,
		PID: os.Getpid(), Supervised: d.fdStoreAlive(), Supervisor: supervisorPID(), Mounts: len(d.images.list()), Layers: len(d.pool.Stats()),
		CacheBytes: cs.Bytes, CacheLimit: cs.Limit,
	})
}

// fdStoreAlive reports whether something keeps the daemon's connections
// through a restart: systemd, or strata's supervisor while it is still
// the daemon's parent (a supervisor killed leaves the daemon reparented,
// its descriptor store gone with it).
func (d *Daemon) fdStoreAlive() bool {
	if d.fdStore == nil {
		return false
	}
	return os.Getenv(supervisorEnv) == "" || supervisorPID() != 0
}

// postHandover stops the daemon for a handover (strata daemon --upgrade):
// it answers first, then stops serving without unmounting anything. Only
// a daemon whose connections are kept in a descriptor store can.
func (d *Daemon) postHandover(w http.ResponseWriter, r *http.Request) {
	if d.fdStore != nil && !d.fdStoreAlive() {
		writeError(w, fmt.Errorf("this daemon's supervisor, which kept its connections, is gone: a restart would unmount everything (stop it and start a new daemon instead): %w", errdefs.ErrFailedPrecondition), nil)
		return
	}
	if d.fdStore == nil {
		writeError(w, fmt.Errorf("this daemon keeps its connections in no descriptor store (run it under strata's supervisor or a systemd unit with FileDescriptorStoreMax=): a restart would unmount everything: %w", errdefs.ErrFailedPrecondition), nil)
		return
	}
	writeJSON(w, http.StatusAccepted, Status{PID: os.Getpid(), Root: d.cfg.Root})
	d.handoverOnce.Do(func() { close(d.handover) })
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		slog.Warn("control API: writing response", "error", err)
	}
}

// writeError answers with the status matching the error's class. detail,
// when set, is the underlying cause of a class-only err.
func writeError(w http.ResponseWriter, err, detail error) {
	status := http.StatusInternalServerError
	switch {
	case errdefs.IsInvalidArgument(err):
		status = http.StatusBadRequest
	case errdefs.IsNotFound(err):
		status = http.StatusNotFound
	case errdefs.IsAlreadyExists(err), errdefs.IsFailedPrecondition(err):
		status = http.StatusConflict
	}
	if detail != nil {
		err = errors.Join(err, detail)
	}
	writeJSON(w, status, apiError{Error: errorMessage(err)})
}

// errorMessage is err's text for a client, with where credentials come
// from when a registry refused them.
func errorMessage(err error) string {
	msg := err.Error()
	if (errdefs.IsUnauthorized(err) || errdefs.IsPermissionDenied(err)) && !strings.Contains(msg, "docker login") {
		msg += " (" + commit.CredentialsHint("") + ")"
	}
	return msg
}
