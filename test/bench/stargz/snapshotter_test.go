package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TestServeSnapshotter serves the stargz snapshotter on a socket, lists
// its (empty) snapshots over containerd's snapshots API as containerd's
// proxy plugin does, and checks that cancelling ends the server cleanly.
func TestServeSnapshotter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the stargz snapshotter's root checks need root")
	}
	dir, err := os.MkdirTemp("/tmp", "sgb-") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serveSnapshotter(ctx, filepath.Join(dir, "root"), sock, true) }()
	deadline := time.Now().Add(30 * time.Second)
	for _, err := os.Stat(sock); err != nil; _, err = os.Stat(sock) {
		if time.Now().After(deadline) {
			t.Fatal("socket not served within 30s")
		}
		select {
		case err := <-done:
			t.Fatalf("serveSnapshotter ended at start: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	_, err = snapshotsapi.NewSnapshotsClient(conn).Stat(cctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "stargz", Key: "none"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Stat of a missing snapshot: %v; want NotFound", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveSnapshotter after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serveSnapshotter did not stop within 30s of cancel")
	}
}
