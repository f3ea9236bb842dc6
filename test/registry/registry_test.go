package registry

import (
	"context"
	"errors"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

var starters = []struct {
	name  string
	start func(testing.TB) *Registry
}{
	{KindDistribution, Start},
	{KindInProcess, StartInProcess},
}

// TestPushPull proves each registry is a working OCI registry on loopback:
// an image written with ggcr comes back with the same digest.
func TestPushPull(t *testing.T) {
	for _, s := range starters {
		t.Run(s.name, func(t *testing.T) {
			r := s.start(t)
			if r.Kind() != s.name {
				t.Errorf("Kind() = %q, want %q", r.Kind(), s.name)
			}
			if got := r.URL(); got != "http://"+r.Host() {
				t.Errorf("URL() = %q", got)
			}
			img, err := random.Image(1024, 2)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ref, err := name.ParseReference(r.Ref("test/img", "v1"))
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
				t.Fatalf("push: %v", err)
			}
			got, err := remote.Image(ref, remote.WithContext(ctx))
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			want, _ := img.Digest()
			if d, err := got.Digest(); err != nil || d != want {
				t.Fatalf("pulled digest %v (%v), want %v", d, err, want)
			}
			// Delete is enabled: needed by GC tests of other packages.
			if err := remote.Delete(ref.Context().Digest(want.String()), remote.WithContext(ctx)); err != nil {
				t.Errorf("delete: %v", err)
			}
		})
	}
}

// TestCloseStopsProcess proves cleanup really kills the registry: after
// Close, the port refuses connections and the process is gone.
func TestCloseStopsProcess(t *testing.T) {
	if err := EnsureInstalled(context.Background()); err != nil {
		t.Fatal(err)
	}
	r, err := New(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.StorageDir()); err != nil {
		t.Errorf("storage dir: %v", err)
	}
	pid := r.proc.cmd.Process.Pid
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d still exists after Close (kill 0: %v)", pid, err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	if resp, err := client.Get(r.URL() + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("registry still answers after Close: %s", resp.Status)
	}
}

// TestNewFailsClearly proves a registry that cannot start is reported with
// its log, not as a hang: storage under a regular file cannot be created.
func TestNewFailsClearly(t *testing.T) {
	file := t.TempDir() + "/not-a-dir"
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := New(ctx, file); err == nil {
		t.Fatal("New succeeded with storage under a regular file")
	}
}

// TestWaitReadyNoticesExit proves a registry process that dies during
// startup fails New at once with ErrNotReady instead of after the timeout.
func TestWaitReadyNoticesExit(t *testing.T) {
	host, err := freeHost() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	close(exited)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = waitReady(ctx, "http://"+host, exited, nil)
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("waitReady = %v, want ErrNotReady", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("waitReady waited for the deadline instead of noticing the exit: %v", err)
	}
}

// TestAuth checks the private registry: a push without credentials is
// refused, one with them works, and the pulled image is the pushed one.
func TestAuth(t *testing.T) {
	auth := Auth{User: "builder", Password: "s3cret"}
	r := StartWithAuth(t, auth)
	resp, err := http.Get(r.URL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("GET /v2/ without credentials: %s, challenge %q; want 401 and a challenge", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.Ref("private", "v1"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err == nil {
		t.Fatal("push without credentials succeeded")
	}
	basic := remote.WithAuth(&authn.Basic{Username: auth.User, Password: auth.Password})
	if err := remote.Write(ref, img, basic); err != nil {
		t.Fatalf("push with credentials: %v", err)
	}
	got, err := remote.Image(ref, basic)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, err := got.Digest(); err != nil || d != want {
		t.Errorf("pulled %v (%v), pushed %v", d, err, want)
	}
}
