package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
)

// TestCommitReproducible applies the change script to writable mounts of
// one image on two fresh state roots, one on the disk and one on tmpfs,
// each daemon with its own TMPDIR, and commits in every format: the
// manifest digests must be equal, format by format.
func TestCommitReproducible(t *testing.T) {
	requireRoot(t)
	base := push(t, shared.reg, "commit-repro", "base", fixture.Standard(), fixture.FormEStargz)
	tmpfs := t.TempDir()
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1g,mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, unix.MNT_DETACH) })
	if err := os.Mkdir(filepath.Join(tmpfs, "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	roots := []struct{ name, root string }{{"disk", ""}, {"tmpfs", filepath.Join(tmpfs, "root")}}
	digests := map[string][]string{}
	for _, r := range roots {
		t.Run(r.name, func(t *testing.T) {
			t.Setenv("TMPDIR", t.TempDir()) // the daemon spools there
			d := startDaemon(t, func(c *daemon.Config) {
				if r.root != "" {
					c.Root = r.root
				}
			})
			dir, _ := d.mountRW(t, base)
			// Without the big sparse files: the layer writer's own tests
			// show those reproducible, across filesystems too.
			applyScript(t, dir, false)
			for _, format := range commitFormats {
				res, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, r.name+"-"+formatTag(format)),
					Format: format, SourceDateEpoch: epoch()})
				if err != nil {
					t.Fatalf("commit --format %s: %v", format, err)
				}
				digests[format] = append(digests[format], res.Digest.String())
			}
		})
	}
	for _, format := range commitFormats {
		if ds := digests[format]; len(ds) != 2 || ds[0] != ds[1] {
			t.Errorf("--format %s: the same changes on two state roots gave %v", format, ds)
		}
	}
}

// TestCommitImage checks what a commit writes besides the layer: an empty
// commit's history entry, --message, --author and --change on a base with
// Docker media types (the output is OCI), and --docker refused with a
// reason.
func TestCommitImage(t *testing.T) {
	requireRoot(t)
	base := push(t, shared.reg, "commit-image", "base", fixture.Standard(), fixture.FormEStargz, fixture.WithDockerMediaTypes())
	d := startDaemon(t, nil)
	dir, m := d.mountRW(t, base)
	baseImg := remoteImage(t, base)
	baseCfg, err := baseImg.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("empty", func(t *testing.T) {
		res, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, "empty"), Message: "nothing changed"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Layer != "" || res.Changes != 0 {
			t.Errorf("an empty commit made a layer: %+v", res)
		}
		img := remoteImage(t, tagged(base, "empty"))
		layers, _ := img.Layers()
		if len(layers) != len(m.Layers) {
			t.Errorf("an empty commit has %d layers, the base %d", len(layers), len(m.Layers))
		}
		cfg, _ := img.ConfigFile()
		h := cfg.History[len(cfg.History)-1]
		if len(cfg.History) != len(baseCfg.History)+1 || !h.EmptyLayer || h.CreatedBy != "nothing changed" {
			t.Errorf("an empty commit's last history entry is %+v (of %d; the base has %d), want empty_layer with created_by %q",
				h, len(cfg.History), len(baseCfg.History), "nothing changed")
		}
		if !slices.Equal(cfg.RootFS.DiffIDs, baseCfg.RootFS.DiffIDs) {
			t.Errorf("an empty commit changed the diff IDs")
		}
	})

	if err := os.WriteFile(filepath.Join(dir, "etc/app.conf"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("config", func(t *testing.T) {
		_, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, "config"), Message: "hand-made", Author: "e2e <e2e@strata>",
			Changes: []string{`CMD ["/bin/app", "--serve"]`, "ENV STAGE=two", "LABEL org.example.k=v", "WORKDIR /srv", "USER 1000:1000", "EXPOSE 8080/tcp",
				"HEALTHCHECK --interval=5s --start-interval=2s CMD /bin/app --check"}})
		if err != nil {
			t.Fatal(err)
		}
		img := remoteImage(t, tagged(base, "config"))
		cfg, _ := img.ConfigFile()
		c := cfg.Config
		if !slices.Equal(c.Cmd, []string{"/bin/app", "--serve"}) || !slices.Contains(c.Env, "STAGE=two") ||
			c.Labels["org.example.k"] != "v" || c.WorkingDir != "/srv" || c.User != "1000:1000" {
			t.Errorf("--change lines not in the config: %+v", c)
		}
		if _, ok := c.ExposedPorts["8080/tcp"]; !ok {
			t.Errorf("EXPOSE 8080/tcp not in the config: %+v", c.ExposedPorts)
		}
		// The start interval, which go-containerregistry's model lacks,
		// where Docker keeps it.
		if h := c.Healthcheck; h == nil || h.Interval != 5*time.Second || !slices.Equal(h.Test, []string{"CMD-SHELL", "/bin/app --check"}) {
			t.Errorf("HEALTHCHECK not in the config: %+v", h)
		}
		if got := string(healthStartOf(t, tagged(base, "config"))); got != "2000000000" {
			t.Errorf("the health check's StartInterval is %q, want 2000000000 (2s)", got)
		}
		h := cfg.History[len(cfg.History)-1]
		if h.EmptyLayer || h.CreatedBy != "hand-made" || h.Author != "e2e <e2e@strata>" || cfg.Author != "e2e <e2e@strata>" {
			t.Errorf("history entry %+v, author %q", h, cfg.Author)
		}
		if len(cfg.RootFS.DiffIDs) != len(baseCfg.RootFS.DiffIDs)+1 {
			t.Errorf("%d diff IDs, want the base's %d and one more", len(cfg.RootFS.DiffIDs), len(baseCfg.RootFS.DiffIDs))
		}
	})

	// --docker: a gzip or uncompressed layer goes; the TOC-annotated
	// formats and zstd are refused with the reason, and push nothing.
	t.Run("docker", func(t *testing.T) {
		for _, format := range []string{"", "estargz", "zstd", "zstd:chunked"} { // "": the default, eStargz
			_, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, "refused"), Format: format, Docker: true})
			if err == nil || !strings.Contains(err.Error(), "Docker") || !strings.Contains(err.Error(), "use --format gzip or uncompressed") {
				t.Errorf("--docker --format %s: got %v, want a refusal that says why", format, err)
			}
		}
		if hasManifest(t, tagged(base, "refused")) {
			t.Errorf("a refused --docker commit pushed a manifest")
		}
		res, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, "docker"), Format: "gzip", Docker: true})
		if err != nil {
			t.Fatalf("--docker --format gzip: %v", err)
		}
		img := remoteImage(t, res.Ref)
		if mt, _ := img.MediaType(); mt != types.DockerManifestSchema2 {
			t.Errorf("--docker pushed a %s manifest", mt)
		}
		out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "docker://"+res.Ref).CombinedOutput()
		if err != nil {
			t.Errorf("skopeo inspect: %v\n%s", err, out)
		}
	})
}

func remoteImage(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestCommitDeletesLongName: deleting a name of NAME_MAX bytes writes a
// whiteout longer than NAME_MAX (".wh." on top), the only way an image
// can say it; the result mounts, lazily and writable, in every format
// Strata mounts, without the name.
func TestCommitDeletesLongName(t *testing.T) {
	requireRoot(t)
	base := push(t, shared.reg, "commit-longname", "base", fixture.Standard(), fixture.FormEStargz)
	d := startDaemon(t, nil)
	long := strings.Repeat("w", 255)
	dir, _ := d.mountRW(t, base)
	for _, n := range []string{long, "dir/" + long[:250]} {
		if err := os.MkdirAll(filepath.Join(dir, "longnames", filepath.Dir(n)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "longnames", n), []byte("x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "longnames", long[:254]+"d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, "with")}); err != nil {
		t.Fatal(err)
	}
	dir2, _ := d.mountRW(t, tagged(base, "with"))
	for _, n := range []string{long, "dir/" + long[:250], long[:254] + "d"} {
		if err := os.RemoveAll(filepath.Join(dir2, "longnames", n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, format := range []string{"estargz", "gzip", "zstd:chunked", "uncompressed"} {
		ref := tagged(base, "without-"+formatTag(format))
		if _, err := d.commit(t, daemon.CommitRequest{Dir: dir2, Ref: ref, Format: format}); err != nil {
			t.Fatalf("--format %s: %v", format, err)
		}
		ro, _ := d.mount(t, ref)
		rw, _ := d.mountRW(t, ref)
		for _, m := range []string{ro, rw} {
			ents, err := os.ReadDir(filepath.Join(m, "longnames"))
			if err != nil {
				t.Fatalf("--format %s: %v", format, err)
			}
			if len(ents) != 1 || ents[0].Name() != "dir" {
				t.Errorf("--format %s: longnames holds %v, want only dir", format, ents)
			}
			if ents, err := os.ReadDir(filepath.Join(m, "longnames/dir")); err != nil || len(ents) != 0 {
				t.Errorf("--format %s: longnames/dir holds %v (%v), want nothing", format, ents, err)
			}
		}
	}
}
