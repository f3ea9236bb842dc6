package run

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps doc.go's promise: the package is a leaf that imports
// only the standard library and the few modules named there.
func TestImports(t *testing.T) {
	allowed := []string{
		"github.com/opencontainers/runtime-spec/",
		"github.com/opencontainers/image-spec/",
		"github.com/moby/sys/user",
		"golang.org/x/sys/",
		"github.com/containerd/console",
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(p, "/")
			if !strings.Contains(first, ".") {
				continue // standard library
			}
			ok := false
			for _, a := range allowed {
				ok = ok || strings.HasPrefix(p+"/", a) || p == strings.TrimSuffix(a, "/")
			}
			if !ok {
				t.Errorf("%s imports %s, which doc.go does not allow", name, p)
			}
		}
	}
}
