package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// layerSrc is one layer: the tree under Dir, stored under Prefix in the
// image (Prefix "" puts Dir's children at the image root).
type layerSrc struct {
	Dir    string
	Prefix string
}

// imageSpec describes a benchmark image and how to make its trees.
type imageSpec struct {
	Name   string
	Layers func(b *builder) ([]layerSrc, error)
	// Probe is a small file every workload that needs one reads ("cat").
	Probe string
	// Prioritize names the workload whose start the eStargz form is
	// optimized for: the files it reads (traced on a full unpack) are
	// stored first with a prefetch landmark (`strata convert
	// --prioritize`), as stargz-snapshotter's `ctr-remote image optimize`
	// does. Both lazy systems read the same optimized image.
	Prioritize string
}

var images = []imageSpec{
	{Name: "debian", Probe: "etc/os-release", Layers: func(b *builder) ([]layerSrc, error) {
		d, err := b.debootstrap(b.ctx, "debian")
		return []layerSrc{{Dir: d}}, err
	}},
	{Name: "golang", Probe: "usr/local/go/VERSION", Prioritize: "goversion", Layers: func(b *builder) ([]layerSrc, error) {
		d, err := b.debootstrap(b.ctx, "debian")
		return []layerSrc{{Dir: d}, {Dir: goroot(), Prefix: "usr/local/go"}}, err
	}},
	{Name: "python", Probe: "etc/os-release", Prioritize: "python", Layers: func(b *builder) ([]layerSrc, error) {
		d, err := b.debootstrap(b.ctx, "python", "python3")
		return []layerSrc{{Dir: d}}, err
	}},
	{Name: "smallfiles", Probe: "data/d0/d0/d0/d0/f0", Layers: func(b *builder) ([]layerSrc, error) {
		d, err := b.generated("smallfiles", writeSmallFiles)
		return []layerSrc{{Dir: d}}, err
	}},
	{Name: "bigfile", Probe: "data/big.bin", Layers: func(b *builder) ([]layerSrc, error) {
		d, err := b.generated("bigfile", writeBigFile)
		return []layerSrc{{Dir: d}}, err
	}},
}

func imageByName(n string) (imageSpec, bool) {
	for _, im := range images {
		if im.Name == n {
			return im, true
		}
	}
	return imageSpec{}, false
}

func goroot() string {
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return "/usr/local/go"
}

// builder makes image trees under Dir/rootfs and pushes images.
type builder struct {
	ctx    context.Context // one command-line run; not kept beyond it
	Dir    string
	Strata string // strata binary, for convert
	log    *slog.Logger
}

// debootstrap makes (once) a bookworm minbase rootfs with extra packages,
// from the mirror apt is configured with.
func (b *builder) debootstrap(ctx context.Context, name string, include ...string) (string, error) {
	dst := filepath.Join(b.Dir, "rootfs", name)
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		if err := run(ctx, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"); err != nil {
			return "", err
		}
	}
	mirror, err := aptMirror()
	if err != nil {
		return "", err
	}
	tmp := dst + ".tmp"
	_ = os.RemoveAll(tmp)
	args := []string{"--variant=minbase"}
	if len(include) > 0 {
		args = append(args, "--include="+strings.Join(include, ","))
	}
	args = append(args, "bookworm", tmp, mirror)
	b.log.Info("debootstrap", "image", name, "mirror", mirror)
	if err := run(ctx, "debootstrap", args...); err != nil {
		return "", err
	}
	// apt's package cache is not part of any image users run.
	_ = os.RemoveAll(filepath.Join(tmp, "var/cache/apt/archives"))
	return dst, os.Rename(tmp, dst)
}

// aptMirror is the first Debian (non-security) URI apt is configured with.
func aptMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, "/etc/apt/sources.list")
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			for _, w := range fields {
				if strings.HasPrefix(w, "http") && strings.HasSuffix(strings.TrimSuffix(w, "/"), "/debian") {
					fh.Close()
					return w, nil
				}
			}
		}
		fh.Close()
	}
	return "", errors.New("no Debian mirror in /etc/apt/sources.list(.d)")
}

// generated makes (once) a tree with write, deterministically.
func (b *builder) generated(name string, write func(dir string) error) (string, error) {
	dst := filepath.Join(b.Dir, "rootfs", name)
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	tmp := dst + ".tmp"
	_ = os.RemoveAll(tmp)
	b.log.Info("generating", "image", name)
	if err := write(tmp); err != nil {
		return "", err
	}
	return dst, os.Rename(tmp, dst)
}

// writeSmallFiles writes 50,000 files of 1–16 KiB, 50 per directory, four
// directory levels deep. Content is hex text of random bytes: it compresses
// about 2:1, like source trees, not like already-compressed assets.
func writeSmallFiles(dir string) error {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 16<<10)
	for i := range 50_000 {
		leaf := i / 50
		d := filepath.Join(dir, "data", fmt.Sprintf("d%d/d%d/d%d/d%d", leaf/1000, leaf/100%10, leaf/10%10, leaf%10))
		if i%50 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		n := 1024 + rng.IntN(15<<10+1)
		const hex = "0123456789abcdef"
		for j := 0; j < n; j++ {
			buf[j] = hex[rng.IntN(16)]
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", i%50)), buf[:n], 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeBigFile writes data/big.bin: 1 GiB of incompressible bytes.
func writeBigFile(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "data", "big.bin"))
	if err != nil {
		return err
	}
	src := rand.NewChaCha8([32]byte{'s', 't', 'r', 'a', 't', 'a'})
	if _, err := io.CopyN(f, src, 1<<30); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ensureImage pushes name:gzip and name:estargz to reg unless both exist.
func (b *builder) ensureImage(ctx context.Context, reg string, spec imageSpec) error {
	gz, esgz := reg+"/"+spec.Name+":gzip", reg+"/"+spec.Name+":estargz"
	if exists(ctx, gz) && exists(ctx, esgz) {
		// Images cached from a bench before the lists were kept.
		if _, err := os.Stat(prioritizedList(b.Dir, spec)); spec.Prioritize != "" && err != nil {
			_, err = b.prioritized(ctx, gz, spec)
			return err
		}
		return nil
	}
	layers, err := spec.Layers(b)
	if err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	if err := b.push(ctx, gz, layers); err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	args := []string{"convert", "--insecure"}
	if spec.Prioritize != "" {
		list, err := b.prioritized(ctx, gz, spec)
		if err != nil {
			return fmt.Errorf("image %s: %w", spec.Name, err)
		}
		args = append(args, "--prioritize", list)
	}
	b.log.Info("converting to eStargz", "image", spec.Name, "prioritized", spec.Prioritize)
	if err := run(ctx, b.Strata, append(args, gz, esgz)...); err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	return nil
}

// ensurePlain pushes name:plain, the gzip image converted to eStargz
// without prefetch landmarks, unless it exists: what a lazy mount of an
// image nobody optimized for the workload reads.
func (b *builder) ensurePlain(ctx context.Context, reg string, spec imageSpec) error {
	gz, plain := reg+"/"+spec.Name+":gzip", reg+"/"+spec.Name+":plain"
	if exists(ctx, plain) {
		return nil
	}
	b.log.Info("converting to eStargz without landmarks", "image", spec.Name)
	if err := run(ctx, b.Strata, "convert", "--insecure", gz, plain); err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	return nil
}

// prioritizedList is where the list of spec's prioritized files is kept
// with the images (dir is the builder's): `strata convert --prioritize`
// made the eStargz image with it, and `strata index --prioritize` the
// gzip image's indexes and prefetch list.
func prioritizedList(dir string, spec imageSpec) string {
	return filepath.Join(dir, spec.Name+".prioritize")
}

// prioritized unpacks the gzip image gz, traces spec.Prioritize on it and
// writes the files it read, in order, to spec's list file.
func (b *builder) prioritized(ctx context.Context, gz string, spec imageSpec) (string, error) {
	w, ok := workloadByName(spec.Prioritize)
	if !ok {
		return "", fmt.Errorf("no workload %q", spec.Prioritize)
	}
	fp := &fullPull{dir: filepath.Join(b.Dir, "tmp", "prioritize-"+spec.Name)}
	defer fp.Teardown(ctx)
	if err := fp.Prepare(ctx); err != nil {
		return "", err
	}
	root, err := fp.Mount(ctx, gz)
	if err != nil {
		return "", err
	}
	est, err := traceReads(ctx, root, w)
	if err != nil {
		return "", err
	}
	list := prioritizedList(b.Dir, spec)
	body := fmt.Sprintf("# files `%s` reads, in order (traced on a full unpack)\n%s\n", w.Desc, strings.Join(est.Paths, "\n"))
	b.log.Info("prioritized files", "image", spec.Name, "files", len(est.Paths))
	return list, os.WriteFile(list, []byte(body), 0o644)
}

func exists(ctx context.Context, ref string) bool {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return false
	}
	_, err = remote.Head(r, remote.WithContext(ctx))
	return err == nil
}
