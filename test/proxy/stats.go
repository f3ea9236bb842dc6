package proxy

import (
	"net/http"
	"regexp"
	"sync"
	"time"
)

// Stats is a snapshot of what went through the proxy since New or the last
// ResetStats. BytesOut counts response body bytes sent to clients (pulls);
// BytesIn counts request body bytes received from them (pushes).
type Stats struct {
	Requests     int64
	BlobRequests int64 // any method on /v2/<name>/blobs/<digest> (not uploads)
	BytesOut     int64
	BlobBytes    int64 // BytesOut of blob requests
	BytesIn      int64 // request body bytes received from clients (uploads)
	Log          []Entry
	LogDropped   int64 // entries beyond MaxLog, counted but not kept
}

// Entry is one request in the log.
type Entry struct {
	Method   string
	Path     string
	Query    string // the raw query ("mount=…&from=…", "digest=…"), "" if none
	Range    string // the request's Range header, "" if none
	Blob     bool
	Start    time.Time // when the proxy received the request
	Status   int       // 0 when no response was sent (e.g. Down)
	Bytes    int64     // response body bytes
	BytesIn  int64     // request body bytes read from the client
	Duration time.Duration
	Fault    bool // a Fault handled the request; set before the client sees its answer
	Done     bool // the handler returned or hijacked the connection; Duration is final
}

// MaxLog bounds the request log so a long benchmark cannot exhaust memory.
const MaxLog = 100_000

// blobPath matches blob reads: GET/HEAD /v2/<name>/blobs/<alg>:<hex>.
var blobPath = regexp.MustCompile(`^/v2/.+/blobs/[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)

// IsBlob reports whether r addresses a blob by digest; handy as a Fault
// match function.
func IsBlob(r *http.Request) bool { return blobPath.MatchString(r.URL.Path) }

// recorder holds the counters. Entries are pointers so a request in flight
// can update its own entry; snapshot copies them.
type recorder struct {
	mu      sync.Mutex
	stats   Stats
	entries []*Entry
}

func (rec *recorder) begin(r *http.Request) *Entry {
	e := &Entry{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Range: r.Header.Get("Range"), Blob: IsBlob(r), Start: time.Now()}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.stats.Requests++
	if e.Blob {
		rec.stats.BlobRequests++
	}
	if len(rec.entries) < MaxLog {
		rec.entries = append(rec.entries, e)
	} else {
		rec.stats.LogDropped++
	}
	return e
}

// addBytes is called before the bytes are written, so a client that has
// read them always finds them counted; sent corrects a short write.
func (rec *recorder) addBytes(e *Entry, n int64) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	e.Bytes += n
	rec.stats.BytesOut += n
	if e.Blob {
		rec.stats.BlobBytes += n
	}
}

// addBytesIn counts request body bytes as they are read from the client.
func (rec *recorder) addBytesIn(e *Entry, n int64) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	e.BytesIn += n
	rec.stats.BytesIn += n
}

// setStatus is called before the header is sent; fault says a Fault sent
// it, so the entry says so before the client can read the response.
func (rec *recorder) setStatus(e *Entry, status int, fault bool) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	e.Status = status
	e.Fault = e.Fault || fault
}

func (rec *recorder) markFault(e *Entry) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	e.Fault = true
}

// end makes e final. The first call wins: a hijacked request ends at the
// hijack, not when its handler returns.
func (rec *recorder) end(e *Entry, d time.Duration) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if e.Done {
		return
	}
	e.Duration, e.Done = d, true
}

func (rec *recorder) snapshot() Stats {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	s := rec.stats
	s.Log = make([]Entry, len(rec.entries))
	for i, e := range rec.entries {
		s.Log[i] = *e
	}
	return s
}

func (rec *recorder) reset() {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.stats = Stats{}
	rec.entries = nil
}
