package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stratafs/strata/test/fixture"
)

// TestRemoteLabelSetsMountLazily prepares an image's layers through the
// daemon's snapshots socket (what containerd forwards from any client)
// the way each kind of lazy-pull client does: with CRI's labels only,
// and with stargz-snapshotter's labels only (BuildKit, nerdctl,
// ctr-remote). Each layer must become a remote snapshot at once
// (ErrAlreadyExists, no unpacking), and a container root on top must
// read the right bytes while the registry sends a small part of the image.
func TestRemoteLabelSetsMountLazily(t *testing.T) {
	e := startCtdEnv(t)
	conn, err := grpc.NewClient("unix://"+e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "strata")
	busybox := busyboxLayer(t)
	for _, set := range []string{"cri", "stargz"} {
		t.Run(set, func(t *testing.T) {
			// Layers of this set's own: a layer another set mounted
			// already is a snapshot that exists, and mounts nothing new.
			base := append(slices.Clone(busybox), fixture.Text("set", set))
			data := fixture.LayerSpec{fixture.Dir("data"), fixture.Reg("data/big", 32<<20, 3),
				fixture.Text("data/hello.txt", "hello\n"), fixture.Text("data/set", set)}
			ref, size := e.pushImage(t, "labels-"+set, []fixture.LayerSpec{base, data}, fixture.FormEStargz)
			direct, err := name.ParseReference(strings.Replace(ref, e.proxy.Host(), e.reg.Host(), 1), name.Insecure)
			must(t, err)
			img, err := remote.Image(direct)
			must(t, err)
			m, err := img.Manifest()
			must(t, err)
			cfg, err := img.ConfigFile()
			must(t, err)
			var layers, diffIDs []digest.Digest
			for i, l := range m.Layers {
				layers = append(layers, digest.Digest(l.Digest.String()))
				diffIDs = append(diffIDs, digest.Digest(cfg.RootFS.DiffIDs[i].String()))
			}
			chain := identity.ChainIDs(diffIDs)
			var all []string
			for _, l := range layers {
				all = append(all, l.String())
			}
			ctx := context.Background()
			e.proxy.ResetStats()
			mounts := len(e.layerMounts(t))
			parent := ""
			for i := range layers {
				labels := map[string]string{snapshots.LabelSnapshotRef: chain[i].String()}
				if set == "cri" {
					labels["containerd.io/snapshot/cri.image-ref"] = ref
					labels["containerd.io/snapshot/cri.layer-digest"] = layers[i].String()
					labels["containerd.io/snapshot/cri.image-layers"] = strings.Join(all, ",")
				} else {
					labels["containerd.io/snapshot/remote/stargz.reference"] = ref
					labels["containerd.io/snapshot/remote/stargz.digest"] = layers[i].String()
					labels["containerd.io/snapshot/remote/stargz.layers"] = strings.Join(all, ",")
				}
				_, err := sn.Prepare(ctx, "extract-"+set+"-"+chain[i].Encoded(), parent, snapshots.WithLabels(labels))
				if !errdefs.IsAlreadyExists(err) {
					t.Fatalf("layer %d: Prepare with %s labels: %v, want ErrAlreadyExists (a remote snapshot)\ndaemon log:\n%s", i+1, set, err, e.daemonLog())
				}
				// Found as containerd finds it: by its target label
				// and its parent.
				var found []string
				must(t, sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
					if info.Kind == snapshots.KindCommitted && info.Labels[snapshots.LabelSnapshotRef] == chain[i].String() && info.Parent == parent {
						found = append(found, info.Name)
					}
					return nil
				}))
				if len(found) != 1 {
					t.Fatalf("layer %d: remote snapshots of %s above %q: %q, want one", i+1, chain[i], parent, found)
				}
				parent = found[0]
			}
			if n := len(e.layerMounts(t)) - mounts; n != 2 {
				t.Errorf("%d new layer mounts for a 2-layer image, want 2", n)
			}

			key := "root-" + set
			ms, err := sn.Prepare(ctx, key, parent)
			must(t, err)
			t.Cleanup(func() { sn.Remove(context.Background(), key) })
			root := filepath.Join(t.TempDir(), "root")
			must(t, os.Mkdir(root, 0o755))
			must(t, mount.All(ms, root))
			t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
			got, err := os.ReadFile(filepath.Join(root, "data/hello.txt"))
			if err != nil || string(got) != "hello\n" {
				t.Errorf("data/hello.txt in the container root: %q, %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(root, "bin/sh")); err != nil {
				t.Errorf("the lower layer is not in the container root: %v", err)
			}
			st := e.proxy.Stats()
			if st.BlobBytes*10 >= size {
				t.Errorf("the registry sent %d blob bytes of a %d-byte image, want under 10%%", st.BlobBytes, size)
			}
			ls, err := exec.Command(e.bin, "ls", "--config", e.cfg, "--socket", e.control).CombinedOutput()
			if err != nil {
				t.Fatalf("strata ls: %v\n%s", err, ls)
			}
			if n := strings.Count(string(ls), ref+" ("+set+")"); n != 2 {
				t.Errorf("strata ls lists %d layers for %s (%s), want 2:\n%s", n, ref, set, ls)
			}
		})
	}
}
