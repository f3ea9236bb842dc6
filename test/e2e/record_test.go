package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
)

// The media type of recorded lists, spelled out: the acceptance side of
// the format, not the package's constant.
const prefetchListType = "application/vnd.stratafs.prefetch-list.v1+json"

// uniqueRepo is a repository name of its own for one run of a test:
// referrers pile up per repository, and -count runs a test again on the
// same registry.
func uniqueRepo(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// mountWith mounts ref with req's options at a new directory.
func (d *testDaemon) mountWith(t *testing.T, req daemon.MountRequest) (string, *daemon.Mount) {
	t.Helper()
	req.Dir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := d.client.Mount(ctx, req)
	if err != nil {
		t.Fatalf("mount %s: %v", req.Ref, err)
	}
	t.Cleanup(func() { d.client.Unmount(context.Background(), req.Dir, true) })
	return req.Dir, m
}

// logMark is where the daemon log ends now: waitLog looks after it, so
// that a line of an earlier run of the test (-count) does not count.
func logMark() int { return len(logs.String()) }

// waitLog waits, bounded, for a daemon log line after mark holding every
// part.
func waitLog(t *testing.T, mark int, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(logs.String()[mark:], "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q within 30s", parts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readChecked(t *testing.T, dir, path string, layers []fixture.LayerSpec) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, path))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, expected(t, layers, path)) {
		t.Fatalf("%s: wrong content", path)
	}
}

// TestRecordedPrefetch records what a workload opens on one machine,
// pushes the list as a referrer of the image, and checks that a fresh
// daemon (another machine) fetches those files at its mount, and only
// those: reading them afterwards asks the registry for nothing.
func TestRecordedPrefetch(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	ref := push(t, shared.reg, uniqueRepo("recorded"), "estargz", layers, fixture.FormEStargz)
	listed := []string{"other/4k.bin", "small/b/4k.bin"}

	first := startDaemon(t, nil)
	mark := logMark()
	dir, m := first.mountWith(t, daemon.MountRequest{Ref: ref, Writable: true, Record: true, RecordPush: true})
	if !m.Recording {
		t.Fatal("the mount does not say it records")
	}
	for _, f := range listed {
		readChecked(t, dir, f, layers)
	}
	// Stat and list only: not opened, not recorded.
	if _, err := os.Stat(filepath.Join(dir, fixture.BigFile)); err != nil {
		t.Fatal(err)
	}
	if err := first.client.Unmount(context.Background(), dir, true); err != nil {
		t.Fatal(err)
	}
	waitLog(t, mark, "recorded prefetch list pushed", m.Digest.String())

	// The referrer is in the registry, as OCI's referrers tag scheme has it.
	refs := referrersOf(t, ref, m.Digest)
	if len(refs) != 1 || refs[0].ArtifactType != prefetchListType {
		t.Fatalf("referrers of the image: %+v", refs)
	}
	// A recording that sees no open (its workload did not run, or failed
	// at once) keeps and pushes nothing: the good list stays, here and in
	// the registry.
	mark = logMark()
	idle, _ := first.mountWith(t, daemon.MountRequest{Ref: ref, Record: true, RecordPush: true})
	if err := first.client.Unmount(context.Background(), idle, false); err != nil {
		t.Fatal(err)
	}
	waitLog(t, mark, "recorded prefetch list empty", m.Digest.String())
	if got := referrersOf(t, ref, m.Digest); len(got) != 1 || got[0].Digest != refs[0].Digest {
		t.Fatalf("referrers after an empty recording: %+v, want only %s", got, refs[0].Digest)
	}
	mark = logMark()
	again, _ := first.mountWith(t, daemon.MountRequest{Ref: ref})
	if line := waitLog(t, mark, "recorded prefetch done", m.Digest.String(), "from=store"); !strings.Contains(line, "files=2 ") {
		t.Fatalf("the stored list after an empty recording: %s", line)
	}
	if err := first.client.Unmount(context.Background(), again, false); err != nil {
		t.Fatal(err)
	}
	var list struct {
		Image digest.Digest
		Files []struct {
			Layer int
			Path  string
		}
	}
	if err := json.Unmarshal(artifactBlob(t, ref, digest.Digest(refs[0].Digest.String())), &list); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range list.Files {
		paths = append(paths, f.Path)
	}
	// Files the mount itself opened (none here) may come first; the
	// workload's, in its order, must be there.
	if got := strings.Join(paths, ","); !strings.Contains(got, strings.Join(listed, ",")) || strings.Contains(got, fixture.BigFile) {
		t.Fatalf("recorded %v, want %v in that order and not the file only stat'ed", paths, listed)
	}

	// Older lists pile up beside it (every build may push one): junk
	// here, with no creation time, so older than the real one. Only the
	// newest is fetched; the others' manifests are never asked for.
	for i := range 8 {
		pushReferrer(t, ref, m.Digest, fmt.Appendf(nil, "not a list %d", i))
	}

	// Another machine: a fresh daemon, through a counting proxy.
	p := startProxy(t, shared.reg)
	second := startDaemon(t, nil)
	mark = logMark()
	dir2, m2 := second.mountWith(t, daemon.MountRequest{Ref: viaProxy(ref, shared.reg, p)})
	line := waitLog(t, mark, "recorded prefetch done", m2.Digest.String(), "from=registry")
	if !strings.Contains(line, "files=2 ") || !strings.Contains(line, "missing=0") {
		t.Fatalf("prefetch: %s", line)
	}
	var referrerManifests []string
	for _, e := range p.Stats().Log {
		if strings.Contains(e.Path, "/manifests/sha256:") && !strings.HasSuffix(e.Path, m2.Digest.String()) {
			referrerManifests = append(referrerManifests, e.Path)
		}
	}
	if len(referrerManifests) != 1 || !strings.HasSuffix(referrerManifests[0], refs[0].Digest.String()) {
		t.Errorf("referrer manifests fetched: %v, want only the newest list's, %s", referrerManifests, refs[0].Digest)
	}
	if s := p.Stats(); s.BlobBytes > 2<<20 {
		t.Errorf("mount and prefetch moved %d blob bytes; the listed files are 8 KiB (the 16 MiB file must stay put)", s.BlobBytes)
	}
	p.ResetStats()
	for _, f := range listed {
		readChecked(t, dir2, f, layers)
	}
	if s := p.Stats(); s.BlobRequests != 0 {
		t.Errorf("reading the listed files made %d blob requests (%d bytes), want none", s.BlobRequests, s.BlobBytes)
	}
	// Laziness is intact for what is not listed.
	readChecked(t, dir2, "small/a/4k.bin", layers)
	if s := p.Stats(); s.BlobRequests == 0 {
		t.Error("a file that is not listed was there without a request: prefetched too much")
	}
}

// referrersOf lists the referrers of the image subject in ref's
// repository, as a registry client sees them.
func referrersOf(t *testing.T, ref string, subject digest.Digest) []v1.Descriptor {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := ggcrremote.Referrers(r.Context().Digest(subject.String()))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return im.Manifests
}

// pushReferrer pushes list as a prefetch-list referrer of the image at ref.
func pushReferrer(t *testing.T, ref string, subject digest.Digest, list []byte) {
	t.Helper()
	pushArtifact(t, ref, subject, prefetchListType, prefetchListType, list, nil, nil)
}

// pushArtifact pushes, to ref's repository, an artifact of artifactType
// whose subject is the image subject (ref's manifest) and whose one blob,
// of media type blobType, is blob; annotations go on the blob's
// descriptor and on the manifest.
func pushArtifact(t *testing.T, ref string, subject digest.Digest, artifactType, blobType string, blob []byte, blobAnnotations, annotations map[string]string) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	repo := r.Context()
	empty := []byte("{}")
	for _, l := range [][]byte{blob, empty} {
		if err := ggcrremote.WriteLayer(repo, static.NewLayer(l, types.MediaType(blobType))); err != nil {
			t.Fatal(err)
		}
	}
	desc, err := ggcrremote.Head(r)
	if err != nil {
		t.Fatal(err)
	}
	man := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest, ArtifactType: artifactType,
		Config:      ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: digest.FromBytes(empty), Size: 2},
		Layers:      []ocispec.Descriptor{{MediaType: blobType, Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: blobAnnotations}},
		Subject:     &ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: subject, Size: desc.Size},
		Annotations: annotations,
	}
	man.SchemaVersion = 2
	raw, err := json.Marshal(man)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Put(repo.Digest(digest.FromBytes(raw).String()), rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
}

type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error) { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}

// TestHostileRecordedListIsRefused: a referrer list that names paths
// outside the layer, or another image's layers, is refused with a log
// line; the mount works and fetches nothing for it.
func TestHostileRecordedListIsRefused(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	for name, files := range map[string]string{
		"escape":      `[{"layer":0,"path":"../../../etc/passwd"}]`,
		"other-layer": `[{"layer":0,"path":"other/4k.bin"}]`,
	} {
		t.Run(name, func(t *testing.T) {
			ref := push(t, shared.reg, uniqueRepo("hostile-list-"+name), "estargz", layers, fixture.FormEStargz)
			d0 := startDaemon(t, nil)
			_, m := d0.mountWith(t, daemon.MountRequest{Ref: ref})
			layer := m.Layers[0].Digest
			if name == "other-layer" {
				layer = digest.FromString("a layer of another image")
			}
			list := `{"mediaType":"` + prefetchListType + `","image":"` + m.Digest.String() + `","layers":["` + layer.String() + `"],"files":` + files + `}`
			pushReferrer(t, ref, m.Digest, []byte(list))

			p := startProxy(t, shared.reg)
			d := startDaemon(t, nil)
			mark := logMark()
			dir, m2 := d.mountWith(t, daemon.MountRequest{Ref: viaProxy(ref, shared.reg, p)})
			waitLog(t, mark, "recorded prefetch list refused", m2.Digest.String())
			atMount := p.Stats()
			p.ResetStats()
			readChecked(t, dir, "other/4k.bin", layers)
			if s := p.Stats(); s.BlobRequests == 0 {
				t.Errorf("the refused list was used: the file came without a request (mount moved %d bytes)", atMount.BlobBytes)
			}
		})
	}
}

// TestPrefetchListsOff: with prefetch_lists = "off" the daemon neither
// looks for a list nor fetches one.
func TestPrefetchListsOff(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	ref := push(t, shared.reg, uniqueRepo("recorded-off"), "estargz", layers, fixture.FormEStargz)
	first := startDaemon(t, nil)
	mark := logMark()
	dir, m := first.mountWith(t, daemon.MountRequest{Ref: ref, Record: true, RecordPush: true})
	readChecked(t, dir, "other/4k.bin", layers)
	if err := first.client.Unmount(context.Background(), dir, false); err != nil {
		t.Fatal(err)
	}
	waitLog(t, mark, "recorded prefetch list pushed", m.Digest.String())

	p := startProxy(t, shared.reg)
	d := startDaemon(t, func(c *daemon.Config) { c.PrefetchLists = daemon.PrefetchListsOff })
	dir2, _ := d.mountWith(t, daemon.MountRequest{Ref: viaProxy(ref, shared.reg, p)})
	time.Sleep(200 * time.Millisecond) // a lookup, were there one, runs beside the mount
	for _, e := range p.Stats().Log {
		if strings.Contains(e.Path, "/referrers/") || strings.Contains(e.Path, "/manifests/sha256-") {
			t.Errorf("looked for a referrer with prefetch_lists off: %s %s", e.Method, e.Path)
		}
	}
	p.ResetStats()
	readChecked(t, dir2, "other/4k.bin", layers)
	if s := p.Stats(); s.BlobRequests == 0 {
		t.Error("the file came without a request: a list was used with prefetch_lists off")
	}
}

// TestBuildUsesBaseRecordedList: a Dockerfile build FROM an image with a
// recorded list (pushed as a referrer) prefetches the listed files for
// its RUN step, whose image (the base plus a COPY layer) has no list of
// its own: the base's layers are its first ones.
func TestBuildUsesBaseRecordedList(t *testing.T) {
	requireRoot(t)
	layers, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	base := push(t, shared.reg, uniqueRepo("build-base-recorded"), "v1", layers, fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))
	rec := startDaemon(t, nil)
	mark := logMark()
	dir, m := rec.mountWith(t, daemon.MountRequest{Ref: base, Record: true, RecordPush: true})
	if _, err := os.ReadFile(filepath.Join(dir, "bin/busybox")); err != nil {
		t.Fatal(err)
	}
	if err := rec.client.Unmount(context.Background(), dir, false); err != nil {
		t.Fatal(err)
	}
	waitLog(t, mark, "recorded prefetch list pushed", m.Digest.String())

	b := &buildBench{d: startDaemon(t, nil), bin: buildStrata(t), base: base}
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("ARG BASE\nFROM $BASE\nCOPY f /f\nRUN busybox cat /f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "f"), []byte("a file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mark = logMark()
	b.mustBuild(t, ctxDir)
	line := waitLog(t, mark, "recorded prefetch done", "base image "+m.Digest.String())
	if !strings.Contains(line, "files=1 ") {
		t.Fatalf("the RUN step's mount did not prefetch the base's listed file: %s", line)
	}
}

// TestBuildRecords: `strata build --record --record-push` notes what the
// first RUN on the FROM image opens and pushes the list as a referrer of
// that image; a build on another machine then prefetches those files at
// its RUN step's mount. A stage whose first step is a COPY records
// nothing until its RUN, which no longer runs on the FROM image.
func TestBuildRecords(t *testing.T) {
	requireRoot(t)
	layers, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	base := push(t, shared.reg, uniqueRepo("build-records"), "v1", layers, fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("ARG BASE\nFROM $BASE\nRUN busybox cat /bin/busybox > /dev/null\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	first := &buildBench{d: startDaemon(t, nil), bin: buildStrata(t), base: base}
	mark := logMark()
	_, stderr := first.mustBuild(t, ctxDir, "--record", "--record-push")
	if !strings.Contains(stderr, "recording the files this RUN opens in "+strings.SplitN(base, ":v1", 2)[0]+"@sha256:") {
		t.Errorf("the build did not say it records:\n%s", stderr)
	}
	line := waitLog(t, mark, "recorded prefetch list pushed")
	t.Log(line)

	// Another machine, no cache: its RUN's mount prefetches the list.
	second := &buildBench{d: startDaemon(t, nil), bin: first.bin, base: base}
	mark = logMark()
	second.mustBuild(t, ctxDir)
	line = waitLog(t, mark, "recorded prefetch done")
	if strings.Contains(line, "files=0 ") {
		t.Errorf("the second build's RUN mount prefetched nothing: %s", line)
	}

	if _, stderr, err := first.build(t, ctxDir, "--record-push"); err == nil || !strings.Contains(stderr, "needs --record") {
		t.Errorf("--record-push alone: %v\n%s", err, stderr)
	}
}

// TestRecordSeesWhatOtherMountsRead: a recording mount of layers another
// mount has read (their files in the kernel's page cache, where reads and,
// for layers of small files, opens never reach the daemon) still records
// every file its workload reads.
func TestRecordSeesWhatOtherMountsRead(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	ref := push(t, shared.reg, uniqueRepo("recorded-shared"), "estargz", layers, fixture.FormEStargz)
	d := startDaemon(t, nil)
	other, _ := d.mount(t, ref)
	readChecked(t, other, "other/4k.bin", layers)
	readChecked(t, other, "small/b/4k.bin", layers)

	mark := logMark()
	dir, m := d.mountWith(t, daemon.MountRequest{Ref: ref, Record: true})
	want := []string{"small/b/4k.bin", "small/a/4k.bin", "other/4k.bin"}
	for _, f := range want {
		readChecked(t, dir, f, layers)
	}
	if err := d.client.Unmount(context.Background(), dir, true); err != nil {
		t.Fatal(err)
	}
	line := waitLog(t, mark, "recorded prefetch list kept", m.Digest.String())
	_, hex, _ := strings.Cut(line[strings.Index(line, "list=sha256:"):], "sha256:")
	hex = strings.Fields(hex)[0]
	b, err := os.ReadFile(filepath.Join(d.cfg.Root, "blobs", "sha256", hex))
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Files []struct{ Path string } }
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range list.Files {
		paths = append(paths, f.Path)
	}
	if got := strings.Join(paths, ","); !strings.Contains(got, strings.Join(want, ",")) {
		t.Errorf("recorded %v, want %v in that order", paths, want)
	}
}
