package snapshotter_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stratafs/strata/snapshotter"
)

// serve starts the gRPC service for sn on a socket in a new directory and
// returns a containerd proxy client for it, as containerd's proxy_plugins
// would build.
func serve(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, socket string) snapshots.Snapshotter {
	t.Helper()
	stop, err := snapshotter.Serve(ctx, sn, socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "strata")
}

func TestServeThroughContainerdProxy(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	socket := filepath.Join(f.base, "run", "strata", "containerd.sock")
	client := serve(t, ctx, f.sn, socket)

	st, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", st.Mode().Perm())
	}
	if dir, err := os.Stat(filepath.Dir(socket)); err != nil || dir.Mode().Perm() != 0o711 {
		t.Errorf("socket dir: %v, %v; want 0711", dir.Mode().Perm(), err)
	}

	// The remote protocol's answer must survive the gRPC error mapping.
	_, err = client.Prepare(ctx, "extract-1", "", remoteLabels("chain-l1", "sha256:l1"))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("remote Prepare through gRPC: %v, want ErrAlreadyExists", err)
	}
	ms, err := client.Prepare(ctx, "local-active", "chain-l1", snapshots.WithLabels(map[string]string{"k": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountAt(t, f.base, ms)
	if got := readFile(t, filepath.Join(rootfs, "bin/tool")); got != "tool v1\n" {
		t.Fatalf("bin/tool through proxy mounts = %q", got)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "added"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := client.Commit(ctx, "local", "local-active"); err != nil {
		t.Fatal(err)
	}
	info, err := client.Stat(ctx, "local")
	if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != "chain-l1" {
		t.Fatalf("Stat local: %+v, %v", info, err)
	}
	if _, err := client.Stat(ctx, "missing"); !errdefs.IsNotFound(err) {
		t.Fatalf("Stat missing: %v, want ErrNotFound", err)
	}
	names := map[string]snapshots.Kind{}
	if err := client.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		names[i.Name] = i.Kind
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 || names["chain-l1"] != snapshots.KindCommitted || names["local"] != snapshots.KindCommitted {
		t.Fatalf("Walk: %v", names)
	}
}

func TestServeReplacesStaleSocketButNotLiveOne(t *testing.T) {
	sn, base := newLocal(t)
	ctx := context.Background()
	socket := filepath.Join(base, "sock", "s.sock")
	if err := os.MkdirAll(filepath.Dir(socket), 0o711); err != nil {
		t.Fatal(err)
	}
	// A crashed daemon leaves its socket file behind.
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	client := serve(t, ctx, sn, socket)
	if _, err := client.Prepare(ctx, "a", ""); err != nil {
		t.Fatalf("after replacing a stale socket: %v", err)
	}
	if _, err := snapshotter.Serve(ctx, sn, socket); !errors.Is(err, snapshotter.ErrSocketInUse) {
		t.Fatalf("second Serve on a live socket: %v, want ErrSocketInUse", err)
	}
	if _, err := client.Stat(ctx, "a"); err != nil {
		t.Fatalf("live server disturbed: %v", err)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	sn, base := newLocal(t)
	ctx, cancel := context.WithCancel(context.Background())
	socket := filepath.Join(base, "s.sock")
	stop, err := snapshotter.Serve(ctx, sn, socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := os.Stat(socket)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still up after its context ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop() // a second stop is harmless
}
