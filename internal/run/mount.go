package run

import (
	"encoding/csv"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Mount is an extra mount of a run: Type "bind" (a host path) or "tmpfs".
// Options are runtime-spec mount options ("rbind", "ro", "rprivate",
// "size=1048576", "mode=1777", ...), as ParseMount writes them.
type Mount struct {
	Type, Source, Destination string
	Options                   []string
}

// Mount types.
const (
	MountBind  = "bind"
	MountTmpfs = "tmpfs"
)

// badPathChars cannot be in a mount path: NUL ends a C string, and CSV
// turns "\r\n" into "\n".
const badPathChars = "\x00\r\n"

var propagations = []string{"private", "rprivate", "shared", "rshared", "slave", "rslave"}

// ParseMount parses docker's --mount syntax, comma-separated key=value
// fields (CSV: quote a field that holds a comma):
//
//	type=bind,source=/host/dir,target=/dir[,readonly][,bind-propagation=rslave]
//	type=tmpfs,target=/tmp[,tmpfs-size=64m][,tmpfs-mode=1777]
//
// src is an alias of source; dst and destination of target; ro of readonly
// (which takes an optional =true|false). type defaults to bind, as in
// BuildKit's RUN --mount. A relative bind source is made absolute against
// the current directory. A tmpfs gets mode 1777 unless tmpfs-mode says
// otherwise; tmpfs-size takes bytes or a k, m, g or t suffix.
func ParseMount(s string) (Mount, error) {
	fields, err := splitFields(s)
	if err != nil {
		return Mount{}, err
	}
	kv := map[string]string{}
	for _, f := range fields {
		key, value, hasValue := strings.Cut(f, "=")
		key = canonicalKey(strings.ToLower(strings.TrimSpace(key)))
		if key == "" {
			return Mount{}, mountErr(s, "unknown field %q (want type, source, target, readonly, bind-propagation, tmpfs-size, tmpfs-mode)", f)
		}
		if _, dup := kv[key]; dup {
			return Mount{}, mountErr(s, "%s given twice", key)
		}
		if !hasValue && key != "readonly" {
			return Mount{}, mountErr(s, "%s needs a value (%s=...)", key, key)
		}
		if hasValue && value == "" {
			return Mount{}, mountErr(s, "%s has an empty value", key)
		}
		kv[key] = value
	}
	return buildMount(s, kv)
}

// splitFields reads exactly one CSV record.
func splitFields(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, mountErr(s, "empty")
	}
	r := csv.NewReader(strings.NewReader(s))
	r.FieldsPerRecord = -1
	records, err := r.ReadAll()
	if err != nil {
		return nil, mountErr(s, "%v", err)
	}
	if len(records) != 1 {
		return nil, mountErr(s, "must be one line")
	}
	return records[0], nil
}

func canonicalKey(k string) string {
	switch k {
	case "type", "bind-propagation", "tmpfs-size", "tmpfs-mode":
		return k
	case "source", "src":
		return "source"
	case "target", "destination", "dst":
		return "target"
	case "readonly", "ro":
		return "readonly"
	}
	return ""
}

func buildMount(s string, kv map[string]string) (Mount, error) {
	m := Mount{Type: MountBind}
	if t, ok := kv["type"]; ok {
		m.Type = strings.ToLower(t)
	}
	target, err := cleanTarget(s, kv["target"])
	if err != nil {
		return Mount{}, err
	}
	m.Destination = target
	readonly := false
	if v, ok := kv["readonly"]; ok && v != "" {
		if readonly, err = strconv.ParseBool(v); err != nil {
			return Mount{}, mountErr(s, "readonly=%q: want true or false", v)
		}
	} else {
		readonly = ok
	}
	switch m.Type {
	case MountBind:
		err = bindOptions(s, kv, &m)
	case MountTmpfs:
		err = tmpfsOptions(s, kv, &m)
	default:
		return Mount{}, mountErr(s, "type %q is not supported (bind or tmpfs)", m.Type)
	}
	if err != nil {
		return Mount{}, err
	}
	if readonly {
		m.Options = append(m.Options, "ro")
	}
	return m, nil
}

func cleanTarget(s, t string) (string, error) {
	switch {
	case t == "":
		return "", mountErr(s, "no target (target=/path/in/container)")
	case strings.ContainsAny(t, badPathChars):
		return "", mountErr(s, "target has a NUL or line-break character")
	case !path.IsAbs(t):
		return "", mountErr(s, "target %q is not an absolute path", t)
	case path.Clean(t) == "/":
		return "", mountErr(s, "target cannot be the root")
	}
	return path.Clean(t), nil
}

func bindOptions(s string, kv map[string]string, m *Mount) error {
	for _, k := range []string{"tmpfs-size", "tmpfs-mode"} {
		if _, ok := kv[k]; ok {
			return mountErr(s, "%s is for type=tmpfs", k)
		}
	}
	src := kv["source"]
	if src == "" {
		return mountErr(s, "type=bind needs a source (source=/host/path)")
	}
	if strings.ContainsAny(src, badPathChars) {
		return mountErr(s, "source has a NUL or line-break character")
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return mountErr(s, "source %q: %v", src, err)
	}
	m.Source = abs
	prop := "rprivate"
	if p, ok := kv["bind-propagation"]; ok {
		if !slices.Contains(propagations, p) {
			return mountErr(s, "bind-propagation=%q: want one of %s", p, strings.Join(propagations, ", "))
		}
		prop = p
	}
	m.Options = []string{"rbind", prop}
	return nil
}

func tmpfsOptions(s string, kv map[string]string, m *Mount) error {
	for _, k := range []string{"source", "bind-propagation"} {
		if _, ok := kv[k]; ok {
			return mountErr(s, "%s is not for type=tmpfs", k)
		}
	}
	m.Source = "tmpfs"
	mode := uint64(0o1777)
	if v, ok := kv["tmpfs-mode"]; ok {
		var err error
		if mode, err = strconv.ParseUint(v, 8, 32); err != nil || mode > 0o7777 {
			return mountErr(s, "tmpfs-mode=%q: want octal permissions such as 1777", v)
		}
	}
	m.Options = []string{"nosuid", "nodev", fmt.Sprintf("mode=%o", mode)}
	if v, ok := kv["tmpfs-size"]; ok {
		size, err := parseSize(v)
		if err != nil {
			return mountErr(s, "tmpfs-size=%q: %v", v, err)
		}
		m.Options = append(m.Options, fmt.Sprintf("size=%d", size))
	}
	return nil
}

var sizeRE = regexp.MustCompile(`^(?i)([0-9]+)([kmgt]?)(i?b)?$`)

// parseSize reads "1048576", "64m", "64MiB", "1g": binary multiples, as
// docker's tmpfs-size.
func parseSize(v string) (uint64, error) {
	m := sizeRE.FindStringSubmatch(v)
	if m == nil {
		return 0, fmt.Errorf("want bytes or a number with k, m, g or t")
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("too large")
	}
	shift := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[strings.ToLower(m[2])]
	if n > (^uint64(0))>>shift {
		return 0, fmt.Errorf("too large")
	}
	return n << shift, nil
}

func mountErr(s, format string, args ...any) error {
	return fmt.Errorf("run: %w: --mount %q: %s", ErrInvalidOptions, s, fmt.Sprintf(format, args...))
}

// String is m in ParseMount's syntax; ParseMount(m.String()) gives m back
// for every Mount ParseMount returns.
func (m Mount) String() string {
	fields := []string{"type=" + m.Type}
	if m.Type == MountBind {
		fields = append(fields, "source="+m.Source)
	}
	fields = append(fields, "target="+m.Destination)
	for _, o := range m.Options {
		switch {
		case o == "ro":
			fields = append(fields, "readonly")
		case m.Type == MountBind && slices.Contains(propagations, o) && o != "rprivate":
			fields = append(fields, "bind-propagation="+o)
		case m.Type == MountTmpfs && strings.HasPrefix(o, "size="):
			fields = append(fields, "tmpfs-size="+strings.TrimPrefix(o, "size="))
		case m.Type == MountTmpfs && strings.HasPrefix(o, "mode=") && o != "mode=1777":
			fields = append(fields, "tmpfs-mode="+strings.TrimPrefix(o, "mode="))
		}
	}
	var b strings.Builder
	w := csv.NewWriter(&b)
	_ = w.Write(fields) // a strings.Builder does not fail
	w.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}
