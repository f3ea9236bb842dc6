package index

import (
	"bytes"
	"context"
)

// tocEntry holds the fields of an estargz.TOCEntry that Strata uses, with
// the same JSON names and types (int fields as int64, which is what int is
// on the 64-bit platforms Strata runs on).
type tocEntry struct {
	Name        string
	Type        string
	Size        int64
	ModTime3339 string
	LinkName    string
	Mode        int64
	UID         int64
	GID         int64
	Offset      int64
	InnerOffset int64
	DevMajor    int64
	DevMinor    int64
	Xattrs      map[string][]byte
	ChunkOffset int64
	ChunkSize   int64
	ChunkDigest string
	// Digest is the whole file's content digest (a "reg" entry's).
	Digest string
}

// tocDecoder decodes a TOC's JSON with a jsonReader and hands each entry
// on (to a tocConverter) as soon as it is read, so neither the JSON nor
// the list of entries is ever held whole.
//
// It reads what json.Unmarshal into an estargz.JTOC would: keys match
// field names exactly or else case-insensitively, the last of repeated
// keys wins, unknown keys are skipped, null leaves a field as it is (and
// makes xattrs nil), and a value of the wrong type is an error. Fields
// of TOCEntry that Strata does not use (userName, groupName) are
// type-checked and dropped. The differences are refusals of TOCs no
// writer makes: a repeated "entries" key after a list; a version other
// than 1 before the list (refused at once, though a later "version" key
// would overwrite it); a string value over 1 MiB (see
// maxJSONString); more than MaxXattrs+1 xattrs in one entry, which the
// converter refuses too unless it drops them (a whiteout's).
// TestDecodeTOCMatchesEncodingJSON and its fuzz target hold the decoder
// to this.
type tocDecoder struct {
	r       *jsonReader
	add     func(*tocEntry) error // takes each entry; it may not keep the pointer
	n       int                   // entries read
	version int64
	seen    bool // a version has been read
	listed  bool // an entries list has been read
	entry   tocEntry
	last    struct{ modTime, typ string } // strings repeated entry after entry, kept once
}

// decodeTOC decodes the TOC JSON that r reads, calling add with each
// entry in order. The entry is reused for the next one.
func decodeTOC(ctx context.Context, r *jsonReader, add func(*tocEntry) error) error {
	d := &tocDecoder{r: r, add: add}
	top, err := r.peek()
	if err != nil {
		return err
	}
	if top == 'n' { // null decodes to a zero JTOC
		err = r.literal()
	} else {
		err = r.object(maxFieldName, func(key []byte, whole bool) error { return d.topField(ctx, key, whole) })
	}
	if err != nil {
		return err
	}
	if err := r.atEnd(); err != nil {
		return err
	}
	return d.checkVersion()
}

func (d *tocDecoder) checkVersion() error {
	if d.version != 1 {
		return Invalidf("TOC version %d, only version 1 is known", d.version)
	}
	return nil
}

func (d *tocDecoder) topField(ctx context.Context, key []byte, whole bool) error {
	switch fieldName(key, whole, "version", "entries") {
	case "version":
		n, ok, err := d.r.int64Value()
		if ok {
			d.version, d.seen = n, true
		}
		return err
	case "entries":
		if d.listed {
			return Invalidf("TOC has more than one entries list")
		}
		c, err := d.r.peek()
		if err != nil {
			return err
		}
		if c == 'n' {
			return d.r.literal()
		}
		if d.seen && d.version != 1 {
			return Invalidf("TOC version %d before its entries, only version 1 is known", d.version)
		}
		d.listed = true
		return d.r.array(func() error { return d.entryValue(ctx) })
	}
	return d.r.skipValue()
}

// entryValue reads one element of the entries list and converts it.
func (d *tocDecoder) entryValue(ctx context.Context) error {
	if d.n++; d.n%ctxCheckEvery == 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	c, err := d.r.peek()
	if err != nil {
		return err
	}
	if c == 'n' {
		return Invalidf("TOC has a null entry")
	}
	if c != '{' {
		return d.r.syntaxErr("cannot decode a %s into a TOC entry", kindOf(c))
	}
	d.entry = tocEntry{}
	if err := d.r.object(maxFieldName, d.entryField); err != nil {
		return err
	}
	return d.add(&d.entry)
}

// entryFields are the JSON names of estargz.TOCEntry's fields.
var entryFields = []string{
	"name", "type", "size", "modtime", "linkName", "mode", "uid", "gid", "userName", "groupName",
	"offset", "innerOffset", "devMajor", "devMinor", "xattrs", "digest", "chunkOffset", "chunkSize", "chunkDigest",
}

// entryField decodes the value of key into the entry. The switch matches
// exact names; other keys are matched again by folding.
func (d *tocDecoder) entryField(key []byte, whole bool) error {
	e := &d.entry
	switch string(key) {
	case "name":
		return d.str(&e.Name, nil)
	case "type":
		return d.str(&e.Type, &d.last.typ)
	case "modtime":
		return d.str(&e.ModTime3339, &d.last.modTime)
	case "linkName":
		return d.str(&e.LinkName, nil)
	case "chunkDigest":
		return d.str(&e.ChunkDigest, nil)
	case "digest":
		return d.str(&e.Digest, nil)
	case "userName", "groupName":
		_, _, err := d.r.stringValue()
		return err
	case "xattrs":
		return d.xattrs()
	case "size":
		return d.int(&e.Size)
	case "mode":
		return d.int(&e.Mode)
	case "uid":
		return d.int(&e.UID)
	case "gid":
		return d.int(&e.GID)
	case "offset":
		return d.int(&e.Offset)
	case "innerOffset":
		return d.int(&e.InnerOffset)
	case "devMajor":
		return d.int(&e.DevMajor)
	case "devMinor":
		return d.int(&e.DevMinor)
	case "chunkOffset":
		return d.int(&e.ChunkOffset)
	case "chunkSize":
		return d.int(&e.ChunkSize)
	}
	if name := fieldName(key, whole, entryFields...); name != "" && name != string(key) {
		return d.entryField([]byte(name), true)
	}
	return d.r.skipValue()
}

func (d *tocDecoder) int(field *int64) error {
	n, ok, err := d.r.int64Value()
	if ok {
		*field = n
	}
	return err
}

// str decodes a string field. With last, a value equal to the previous
// one shares its string (types and mtimes repeat on most entries).
func (d *tocDecoder) str(field *string, last *string) error {
	b, ok, err := d.r.stringValue()
	if !ok {
		return err
	}
	if last != nil && string(b) == *last {
		*field = *last
		return nil
	}
	*field = string(b)
	if last != nil {
		*last = *field
	}
	return nil
}

// xattrs decodes the xattrs object into a map, merging into one that a
// repeated key already made, as encoding/json does.
func (d *tocDecoder) xattrs() error {
	e := &d.entry
	c, err := d.r.peek()
	if err != nil {
		return err
	}
	switch c {
	case 'n':
		e.Xattrs = nil
		return d.r.literal()
	case '{':
	default:
		return d.r.syntaxErr("cannot decode a %s into the xattrs field", kindOf(c))
	}
	if e.Xattrs == nil {
		e.Xattrs = make(map[string][]byte)
	}
	return d.r.object(maxJSONString, func(key []byte, whole bool) error {
		if !whole {
			return d.r.syntaxErr("xattr name of more than %d bytes", maxJSONString)
		}
		if len(e.Xattrs) > MaxXattrs { // stop holding more than can be used
			return Invalidf("entry %q: more than %d xattrs", e.Name, MaxXattrs)
		}
		k := string(key)
		v, err := d.r.bytesValue()
		e.Xattrs[k] = v
		return err
	})
}

// maxFieldName is as much of an object key as is kept where keys name
// fields: more than any field name takes, folded or not, so a longer key
// is just an unknown one.
const maxFieldName = 64

// fieldName returns the one of names that key selects: the one equal to
// it, else the first equal under Unicode case folding (encoding/json's
// rule); "" if none. A key not read whole selects none.
func fieldName(key []byte, whole bool, names ...string) string {
	if !whole {
		return ""
	}
	for _, n := range names {
		if string(key) == n {
			return n
		}
	}
	for _, n := range names {
		if bytes.EqualFold(key, []byte(n)) {
			return n
		}
	}
	return ""
}
