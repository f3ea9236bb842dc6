package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
)

// shared is one docker-registry for the whole package, so large fixtures
// are built and pushed once, not once per test.
var shared struct {
	reg *registry.Registry

	bigOnce sync.Once
	bigRef  string
	bigErr  error
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(readerEnv); spec != "" {
		os.Exit(runReader(spec)) // this binary as a reader process
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "strata-e2e-registry-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if err := registry.EnsureInstalled(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		shared.reg, err = registry.New(context.Background(), dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting the shared registry:", err)
			return 1
		}
		defer shared.reg.Close()
		flag.Parse()
		if runsBuildKitTests() {
			startBuildKitBuild()
		}
		defer stopBuildKitBuild()
	}
	defer func() {
		if built.dir != "" {
			os.RemoveAll(built.dir)
		}
	}()
	return m.Run()
}

// bigImage returns the shared registry and the ref of an eStargz image
// with a 200 MiB layer (fixture.Big), pushed on first use.
func bigImage(t *testing.T) (*registry.Registry, string) {
	t.Helper()
	requireRoot(t)
	shared.bigOnce.Do(func() {
		img, err := fixture.Build(context.Background(), fixture.Big(200), fixture.FormEStargz)
		if err != nil {
			shared.bigErr = err
			return
		}
		shared.bigRef = shared.reg.Ref("big", "estargz")
		_, shared.bigErr = fixture.Push(context.Background(), img, shared.bigRef)
	})
	if shared.bigErr != nil {
		t.Fatalf("building the big image: %v", shared.bigErr)
	}
	return shared.reg, shared.bigRef
}
