package importrules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/stratafs/strata"

// Import path patterns. A pattern ending in "/" matches the paths it
// prefixes; any other pattern matches that path and the paths under it;
// nonStd matches every package outside the standard library.
const (
	anyStrata  = module + "/"
	testInfra  = module + "/test/"
	nonStd     = "*"
	containerd = "github.com/containerd/"
	errdefs    = "github.com/containerd/errdefs"
	estargz    = "github.com/containerd/stargz-snapshotter/estargz"
	fuse       = "github.com/hanwen/go-fuse/"
	ggcr       = "github.com/google/go-containerregistry"
)

func strata(rel string) string { return module + "/" + rel }

// A rule is what one package's doc.go says it may import: an import that
// matches a forbid pattern and no except pattern is a violation.
type rule struct {
	says   []string // the sentences of the doc.go that state the rule, word for word
	forbid []string
	except []string
}

// testInfraRule is the sentence every test-infrastructure package's doc.go
// states (the test infrastructure may import itself).
var testInfraRule = rule{
	says:   []string{"It must never import Strata's own packages (remote, store, fs, snapshotter, internal, cmd)"},
	forbid: []string{anyStrata},
	except: []string{testInfra},
}

// rules mirrors the doc.go of every package of the module, keyed by the
// package's path inside the module. Change a row and its doc together.
var rules = map[string]rule{
	"cmd/strata": {
		says:   []string{"It may import every Strata package except the test infrastructure under test/; being a command, nothing imports it."},
		forbid: []string{testInfra},
	},
	"fs": {
		says: []string{
			"fs may import store, remote, fs/index and internal/kmount, and nothing else of Strata (never snapshotter, internal/daemon or cmd).",
			"Of containerd's modules it may import only the errdefs error classes and stargz-snapshotter's estargz format package (which fs/index reads).",
		},
		forbid: []string{anyStrata, containerd},
		except: []string{strata("store"), strata("remote"), strata("fs/index"), strata("internal/kmount"), errdefs, estargz},
	},
	"fs/index/inflate": {
		says:   []string{"This package is a leaf: it imports only the standard library."},
		forbid: []string{nonStd},
	},
	"fs/index": {
		says:   []string{"index imports no other Strata package but its own decoder, fs/index/inflate, and no FUSE library, and of containerd's modules only the errdefs error classes and stargz-snapshotter's estargz format packages (footers, TOC names, annotations)."},
		forbid: []string{anyStrata, fuse, containerd},
		except: []string{strata("fs/index/inflate"), errdefs, estargz},
	},
	"internal/convert": {
		says:   []string{"It may import remote and nothing else of Strata, and no FUSE library; of containerd's modules only stargz-snapshotter's estargz package and (through remote) the errdefs error classes."},
		forbid: []string{anyStrata, fuse, containerd},
		except: []string{strata("remote"), estargz, errdefs},
	},
	"internal/daemon": {
		says:   []string{"The daemon may import every Strata package except cmd and the test infrastructure under test/."},
		forbid: []string{strata("cmd"), testInfra},
	},
	"internal/build": {
		says:   []string{"It may import every Strata package except cmd and the test infrastructure under test/ (it talks to the daemon through internal/daemon's client, and links what that links)."},
		forbid: []string{strata("cmd"), testInfra},
	},
	"internal/commit": {
		says:   []string{"It may import snapshotter, remote, store, internal/kmount, go-containerregistry, image-spec and BuildKit's Dockerfile parser packages; never fs, FUSE or cmd."},
		forbid: []string{anyStrata, fuse},
		except: []string{strata("snapshotter"), strata("remote"), strata("store"), strata("internal/kmount")},
	},
	"internal/run": {
		says:   []string{"This package is a leaf: it may import the standard library,"},
		forbid: []string{anyStrata, fuse, ggcr},
	},
	"internal/importrules": {
		says:   []string{"It imports nothing but the standard library; its test runs `go list`."},
		forbid: []string{nonStd},
	},
	"internal/kmount": {
		says:   []string{"It is a leaf: it may import the standard library, golang.org/x/sys and github.com/moby/sys/mountinfo, and never another Strata package, FUSE or containerd."},
		forbid: []string{nonStd},
		except: []string{"golang.org/x/sys", "github.com/moby/sys/mountinfo"},
	},
	"internal/pull": {
		says:   []string{"This package may import containerd's client packages and, of Strata, the snapshotter package (for its label names) and what it imports (internal/kmount), and nothing else: never fs, store, remote or internal/daemon"},
		forbid: []string{anyStrata},
		except: []string{strata("snapshotter"), strata("internal/kmount")},
	},
	"remote": {
		says:   []string{"remote must never import another Strata package, go-fuse, or containerd (other than the errdefs error classes)."},
		forbid: []string{anyStrata, fuse, containerd},
		except: []string{errdefs},
	},
	"snapshotter": {
		says: []string{
			"It may import internal/kmount and nothing else of Strata (never fs, store, remote, internal/daemon or cmd)",
			"It must never import FUSE libraries.",
		},
		forbid: []string{anyStrata, fuse},
		except: []string{strata("internal/kmount")},
	},
	"store": {
		says:   []string{"it must never import another Strata package, go-fuse, go-containerregistry, or containerd (other than the errdefs error classes)."},
		forbid: []string{anyStrata, fuse, ggcr, containerd},
		except: []string{errdefs},
	},
	"test/bench/cmd/bench": {
		says:   []string{"must never import Strata's own packages (remote, store, fs, snapshotter, internal, cmd)"},
		forbid: []string{anyStrata},
		except: []string{testInfra},
	},
	"test/containerd":   testInfraRule,
	"test/demo/mkimage": testInfraRule,
	"test/fixture":      testInfraRule,
	"test/proc":         testInfraRule,
	"test/proxy":        testInfraRule,
	"test/registry":     testInfraRule,
	"test/treecmp":      testInfraRule,
	"test/e2e": {
		says:   []string{"Its tests may import internal/daemon (to run a daemon in-process), internal/kmount and the test infrastructure under test/, and nothing else of Strata."},
		forbid: []string{anyStrata},
		except: []string{strata("internal/daemon"), strata("internal/kmount")},
	},
}

// importers says which packages may import a package: by links it, and the
// tests of testsBy import it directly.
type importers struct {
	says    string // in the imported package's doc.go
	by      []string
	testsBy []string
}

var importedOnlyBy = map[string]importers{
	"internal/daemon": {
		says:    "Only cmd/strata and internal/build import this package (and, to run a daemon in-process, the tests of cmd/strata and test/e2e).",
		by:      []string{"cmd/strata", "internal/build"},
		testsBy: []string{"cmd/strata", "test/e2e"},
	},
}

// pkg is what `go list -json` says of one package.
type pkg struct {
	ImportPath   string
	Dir          string
	Standard     bool
	DepOnly      bool
	Imports      []string
	TestImports  []string
	XTestImports []string
}

func (p *pkg) rel() string { return strings.TrimPrefix(p.ImportPath, module+"/") }

// testImports are the direct imports of the package's tests, other than
// the package itself.
func (p *pkg) testImports() []string {
	var out []string
	for _, imp := range slices.Concat(p.TestImports, p.XTestImports) {
		if imp != p.ImportPath && !slices.Contains(out, imp) {
			out = append(out, imp)
		}
	}
	slices.Sort(out)
	return out
}

// graph is every package the module's packages link, by import path.
type graph map[string]*pkg

func (g graph) modulePackages() []*pkg {
	var out []*pkg
	for _, p := range g {
		if !p.DepOnly && strings.HasPrefix(p.ImportPath, module+"/") {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *pkg) int { return strings.Compare(a.ImportPath, b.ImportPath) })
	return out
}

func (g graph) standard(path string) bool {
	if p, ok := g[path]; ok {
		return p.Standard
	}
	// Not linked by any module package, only imported by a test: the go
	// command's own test is whether the first element has a dot.
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

// forbidden walks the imports of p and returns the forbidden packages it
// reaches without passing through another forbidden one (so a forbidden
// import is reported once, not with everything it imports), each with the
// chain of imports that reaches it.
func (g graph) forbidden(p *pkg, forbids func(string) bool) (found []string, via map[string]string) {
	prev := map[string]string{p.ImportPath: ""}
	queue := []string{p.ImportPath}
	via = map[string]string{}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if g[cur] == nil {
			continue
		}
		for _, next := range g[cur].Imports {
			if _, seen := prev[next]; seen {
				continue
			}
			prev[next] = cur
			if !forbids(next) {
				queue = append(queue, next)
				continue
			}
			var chain []string
			for at := cur; at != p.ImportPath; at = prev[at] {
				chain = append([]string{at}, chain...)
			}
			found = append(found, next)
			if len(chain) > 0 {
				via[next] = " (through " + strings.Join(chain, " → ") + ")"
			}
		}
	}
	slices.Sort(found)
	return found, via
}

func matches(pattern, path string, std bool) bool {
	switch {
	case pattern == nonStd:
		return !std
	case strings.HasSuffix(pattern, "/"):
		return strings.HasPrefix(path, pattern)
	default:
		return path == pattern || strings.HasPrefix(path, pattern+"/")
	}
}

func (r rule) forbids(path string, std bool) bool {
	match := func(pattern string) bool { return matches(pattern, path, std) }
	return slices.ContainsFunc(r.forbid, match) && !slices.ContainsFunc(r.except, match)
}

// violations checks every module package of g against rules and
// importedOnlyBy, and says what breaks them.
func violations(g graph, rules map[string]rule, importedOnlyBy map[string]importers) []string {
	var out []string
	for _, p := range g.modulePackages() {
		rel := p.rel()
		r, ok := rules[rel]
		if !ok {
			continue // TestEveryPackageStatesItsRule reports it
		}
		said := fmt.Sprintf("%s/doc.go: %q", rel, strings.Join(r.says, " … "))
		found, via := g.forbidden(p, func(dep string) bool { return r.forbids(dep, g.standard(dep)) })
		for _, dep := range found {
			out = append(out, fmt.Sprintf("%s imports %s%s, which its rule forbids (%s)", rel, dep, via[dep], said))
		}
		for _, dep := range p.testImports() {
			if !matches(testInfra, dep, false) && r.forbids(dep, g.standard(dep)) {
				out = append(out, fmt.Sprintf("the tests of %s import %s, which its rule forbids (%s)", rel, dep, said))
			}
		}
		for target, im := range importedOnlyBy {
			if rel == target {
				continue
			}
			said := fmt.Sprintf("%s/doc.go: %q", target, im.says)
			if !slices.Contains(im.by, rel) {
				found, via := g.forbidden(p, func(dep string) bool { return dep == strata(target) })
				for _, dep := range found {
					out = append(out, fmt.Sprintf("%s imports %s%s, which only %v may (%s)", rel, dep, via[dep], im.by, said))
				}
			}
			if !slices.Contains(im.testsBy, rel) && slices.Contains(p.testImports(), strata(target)) {
				out = append(out, fmt.Sprintf("the tests of %s import %s, which only the tests of %v may (%s)", rel, target, im.testsBy, said))
			}
		}
	}
	return out
}

// moduleRoot is the directory of Strata's go.mod, two levels up.
func moduleRoot(t *testing.T) string {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(mod, []byte("module "+module+"\n")) {
		t.Fatalf("%s is not the root of %s: %v", root, module, err)
	}
	return root
}

// load runs `go list -deps` over the whole module.
func load(t *testing.T) graph {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go list over the whole module")
	}
	cmd := exec.Command("go", "list", "-deps",
		"-json=ImportPath,Dir,Standard,DepOnly,Imports,TestImports,XTestImports", "./...")
	cmd.Dir = moduleRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(pkg)
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		g[p.ImportPath] = p
	}
	if len(g.modulePackages()) == 0 {
		t.Fatal("go list found no package of the module")
	}
	return g
}

// TestImportRules fails when a package, or its tests, import what its
// doc.go forbids.
func TestImportRules(t *testing.T) {
	for _, v := range violations(load(t), rules, importedOnlyBy) {
		t.Error(v)
	}
}

// TestEveryPackageStatesItsRule fails when a package has no doc.go, no row
// in rules, or a doc.go that no longer says what its row checks.
func TestEveryPackageStatesItsRule(t *testing.T) {
	g := load(t)
	seen := map[string]bool{}
	for _, p := range g.modulePackages() {
		rel := p.rel()
		seen[rel] = true
		r, ok := rules[rel]
		if !ok {
			t.Errorf("%s has no import rule: say in its doc.go what it may and must never import, and add the rule to the table in %s", rel, "internal/importrules/rules_test.go")
			continue
		}
		says := r.says
		if im, ok := importedOnlyBy[rel]; ok {
			says = append(slices.Clip(says), im.says)
		}
		checkDoc(t, filepath.Join(p.Dir, "doc.go"), rel, says)
	}
	for rel := range rules {
		if !seen[rel] {
			t.Errorf("the rules table names %s, which is not a package of the module", rel)
		}
	}
	for rel := range importedOnlyBy {
		if !seen[rel] {
			t.Errorf("importedOnlyBy names %s, which is not a package of the module", rel)
		}
	}
}

// checkDoc fails unless the package comment of the doc.go at path says
// every sentence of says (whitespace aside) and each mentions importing.
func checkDoc(t *testing.T, path, rel string, says []string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.PackageClauseOnly|parser.ParseComments)
	if err != nil {
		t.Errorf("%s: every package needs a doc.go saying what it may and must never import: %v", rel, err)
		return
	}
	if f.Doc == nil {
		t.Errorf("%s/doc.go has no package comment", rel)
		return
	}
	doc := normalize(f.Doc.Text())
	for _, s := range says {
		if !strings.Contains(s, "import") {
			t.Errorf("rule of %s: %q does not say what it may import", rel, s)
		}
		if !strings.Contains(doc, normalize(s)) {
			t.Errorf("%s/doc.go does not say %q, which the rules table checks: change the doc and the table together", rel, s)
		}
	}
}

func normalize(s string) string { return strings.Join(strings.Fields(s), " ") }

// TestStargzBenchRequiresNoStrata checks test/bench/stargz, its own module
// (so not in ./...): it can import no Strata package without requiring or
// replacing a Strata module in its go.mod.
func TestStargzBenchRequiresNoStrata(t *testing.T) {
	dir := filepath.Join(moduleRoot(t), "test", "bench", "stargz")
	checkDoc(t, filepath.Join(dir, "doc.go"), "test/bench/stargz", []string{"It must never import Strata's packages."})
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(mod), "\n") {
		if !strings.HasPrefix(line, "module ") && strings.Contains(line, module) {
			t.Errorf("test/bench/stargz/go.mod:%d: %q: the module must never import Strata's packages", i+1, strings.TrimSpace(line))
		}
	}
}

// TestRulesCatchAViolation proves the check can fail: in a made-up graph
// where the snapshotter imports fs through internal/y and internal/x, the
// first forbidden import (internal/y) is reported, for the snapshotter and
// (through it) for internal/pull, and so is a store test that imports
// go-fuse.
func TestRulesCatchAViolation(t *testing.T) {
	g := graph{
		strata("snapshotter"): {ImportPath: strata("snapshotter"),
			Imports: []string{"os", strata("internal/kmount"), strata("internal/y")}},
		strata("internal/pull"): {ImportPath: strata("internal/pull"),
			Imports: []string{strata("snapshotter")}},
		strata("internal/y"): {ImportPath: strata("internal/y"), DepOnly: true,
			Imports: []string{strata("internal/x")}},
		strata("internal/x"): {ImportPath: strata("internal/x"), DepOnly: true,
			Imports: []string{strata("fs")}},
		strata("fs"):              {ImportPath: strata("fs"), DepOnly: true},
		strata("internal/kmount"): {ImportPath: strata("internal/kmount"), DepOnly: true},
		"os":                      {ImportPath: "os", Standard: true, DepOnly: true},
		strata("store"): {ImportPath: strata("store"),
			TestImports: []string{"github.com/hanwen/go-fuse/v2/fs", "testing", strata("test/fixture")}},
	}
	got := violations(g, rules, importedOnlyBy)
	want := []string{
		"internal/pull imports " + strata("internal/y") + " (through " + strata("snapshotter") + ")",
		"snapshotter imports " + strata("internal/y"),
		"the tests of store import github.com/hanwen/go-fuse/v2/fs",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d violations, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w+",") && !strings.HasPrefix(got[i], w+" ") {
			t.Errorf("violation %d = %q, want it to start %q", i, got[i], w)
		}
	}
}
