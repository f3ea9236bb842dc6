package build

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// TestCacheDirSharing: a cache mount's sharing as BuildKit has it. Shared
// steps use one directory at once; a locked step waits for another that
// has it; a private step takes an instance of its own while another has
// the first.
func TestCacheDirSharing(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "build", cacheMountsDir, "c")
	builder := func() *builder {
		b := &builder{work: t.TempDir()}
		t.Cleanup(func() {
			for _, f := range b.held {
				f()
			}
		})
		return b
	}
	mkdir := func(string) error { return nil }
	ctx := context.Background()

	a, b := builder(), builder()
	first, releaseA, err := a.cacheDir(ctx, dir, instructions.MountSharingShared, mkdir)
	must(t, err)
	second, releaseB, err := b.cacheDir(ctx, dir, instructions.MountSharingShared, mkdir)
	must(t, err)
	if first != dir || second != dir {
		t.Errorf("shared: %s and %s, want %s for both", first, second, dir)
	}
	releaseA()
	releaseB()

	got, releaseA, err := a.cacheDir(ctx, dir, instructions.MountSharingPrivate, mkdir)
	must(t, err)
	other, releaseB, err := b.cacheDir(ctx, dir, instructions.MountSharingPrivate, mkdir)
	must(t, err)
	if got != dir || other == dir {
		t.Errorf("private: %s and %s, want %s and another", got, other, dir)
	}
	if fi, err := os.Stat(other); err != nil || !fi.IsDir() {
		t.Errorf("the second private instance %s: %v", other, err)
	}
	releaseA()
	releaseB()

	_, releaseA, err = a.cacheDir(ctx, dir, instructions.MountSharingLocked, mkdir)
	must(t, err)
	var released time.Time
	done := make(chan time.Time)
	go func() {
		_, release, err := b.cacheDir(ctx, dir, instructions.MountSharingLocked, mkdir)
		if err != nil {
			t.Error(err)
		} else {
			release()
		}
		done <- time.Now()
	}()
	time.Sleep(300 * time.Millisecond)
	released = time.Now()
	releaseA()
	if got := <-done; got.Before(released) {
		t.Error("locked: a second step had the cache while the first had it")
	}
	// A step waiting for a locked cache stops with its build.
	_, releaseA, err = a.cacheDir(ctx, dir, instructions.MountSharingLocked, mkdir)
	must(t, err)
	defer releaseA()
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, _, err := b.cacheDir(cctx, dir, instructions.MountSharingLocked, mkdir); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a locked wait past its build's end: %v", err)
	}
}

// TestCacheDirMadeWhole: a new cache directory is made aside and renamed
// into place, so a step of another build never binds it half made (a
// from= seed being copied), and one whose making failed (or whose build
// was killed) is not there for the next build.
func TestCacheDirMadeWhole(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "build", cacheMountsDir, "seeded")
	ctx := context.Background()
	failing := &builder{work: t.TempDir()}
	if _, _, err := failing.cacheDir(ctx, dir, "", func(string) error { return errors.New("seed failed") }); err == nil {
		t.Fatal("a failed seed gave a cache")
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed seed left %s: %v", dir, err)
	}
	seed := func(tmp string) error {
		for i := range 20 {
			if err := os.WriteFile(filepath.Join(tmp, string(rune('a'+i))), nil, 0o644); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
		return nil
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			b := &builder{work: t.TempDir()}
			defer func() {
				for _, f := range b.held {
					f()
				}
			}()
			got, release, err := b.cacheDir(ctx, dir, "", seed)
			if err != nil {
				t.Error(err)
				return
			}
			defer release()
			if des, err := os.ReadDir(got); err != nil || len(des) != 20 {
				t.Errorf("a step bound %s holding %d of the seed's 20 files (%v)", got, len(des), err)
			}
		})
	}
	wg.Wait()
}
