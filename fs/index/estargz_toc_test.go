package index

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// trickyTOCs are TOC JSONs at the edges of JSON and of encoding/json's
// field rules, each accepted or refused by decodeTOC exactly as by
// json.Unmarshal into an estargz.JTOC (the decoder the reader used
// before), which checkDecodeMatchesJSON checks.
var trickyTOCs = []string{
	// Strings: escapes, surrogates, invalid UTF-8 (raw bytes).
	`{"version":1,"entries":[{"name":"a\u0062\"\\\/\b\f\n\r\t","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"\ud83d\ude00","type":"reg"},{"name":"\ud83d","type":"reg"},{"name":"\ud83dx","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"\ude00","type":"reg"},{"name":"\ud83d\u0041","type":"reg"},{"name":"\ud83d\ud83d\ude00","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"\uD83D\uDE00\u00e9\u0000","type":"reg"}]}`,
	"{\"version\":1,\"entries\":[{\"name\":\"\xff\",\"type\":\"reg\"},{\"name\":\"\xed\xa0\x80\",\"type\":\"reg\"},{\"name\":\"a\xe6\x97\",\"type\":\"reg\"}]}",
	"{\"version\":1,\"entries\":[{\"name\":\"\x7f\u00e9日本\",\"type\":\"reg\"}]}",
	`{"version":1,"entries":[{"name":"\x","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"\u12G4","type":"reg"}]}`,
	`{"version":1,"entries":[{"name":"\u12`,
	"{\"version\":1,\"entries\":[{\"name\":\"a\x01\",\"type\":\"reg\"}]}",
	`{"version":1,"entries":[{"name":"a`,
	// Keys: folding (U+017F folds to s, U+212A to k), escapes, repeats,
	// long unknown ones.
	`{"VERSION":1,"Entries":[{"NAME":"a","tYpE":"reg","ſize":0,"linKName":"x"}]}`,
	`{"version":1,"entries":[{"n\u0061me":"a","type":"dir"}]}`,
	`{"version":1,"entries":[{"name":"a","name":"b","type":"reg","Name":"c"}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","` + strings.Repeat("k", 100) + `":1}]}`,
	`{"version":2,"version":1,"entries":[]}`,
	`{"entries":[{"name":"a","type":"dir"}],"version":1}`,
	`{"entries":null,"version":1,"entries":[{"name":"a","type":"dir"}]}`,
	// null, and values of the wrong type.
	`{"version":1,"entries":[{"name":"a","type":"reg","size":null,"xattrs":null,"linkName":null,"digest":null}]}`,
	`{"version":1,"entries":[{"name":"a","type":"reg","digest":5}]}`,
	`{"version":1,"entries":[{"name":"a","type":"reg","userName":["x"]}]}`,
	`{"version":1,"entries":[{"name":5}]}`,
	`{"version":1,"entries":[{"name":"a","size":"5"}]}`,
	`{"version":1,"entries":[{"name":"a","size":true}]}`,
	`{"version":1,"entries":[5]}`,
	`{"version":1,"entries":[null]}`,
	`{"version":1,"entries":{}}`,
	`{"version":"1","entries":[]}`,
	`{"version":1.0,"entries":[]}`,
	// xattrs: base64 (CR and LF ignored), null and empty values, merging.
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.a":"eA==","user.b":null,"user.c":""}}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.a":"eA\r\n=="}}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.a":"eA="}}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.a":"eA=="},"xattrs":{"user.b":"eQ=="}}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.a":"eA=="},"xattrs":null}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{}}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":[]}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.a":5}}]}`,
	// Numbers.
	`{"version":1,"entries":[{"name":"a","type":"reg","size":-0,"mode":0,"uid":9223372036854775807,"gid":-9223372036854775808}]}`,
	`{"version":1,"entries":[{"name":"a","type":"reg","offset":123456789012345678,"innerOffset":1234567890123456789}]}`,
	`{"version":1,"entries":[{"name":"a","size":9223372036854775808}]}`,
	`{"version":1,"entries":[{"name":"a","size":1.0}]}`,
	`{"version":1,"entries":[{"name":"a","size":1e2}]}`,
	`{"version":1,"entries":[{"name":"a","size":01}]}`,
	`{"version":1,"entries":[{"name":"a","size":-}]}`,
	`{"version":1,"entries":[{"name":"a","size":1.}]}`,
	`{"version":1,"entries":[{"name":"a","size":` + strings.Repeat("9", 40) + `}]}`,
	`{"version":1,"x":-1.5e+3,"y":0.5E-2,"z":[1e5,-0.0]}`,
	`{"version":1,"x":1e}`,
	`{"version":1,"x":.5}`,
	// Structure.
	`{"version":1,"x":[1,{"y":[true,false,null,"s",{}],"z":{}}],"entries":[{"name":"a","type":"dir","w":{"v":[[]]}}]}`,
	" \t\r\n{ \"version\" : 1 , \"entries\" : [ { \"name\" : \"a\" , \"type\" : \"dir\" } ] } \n\t",
	`{"version":1,"entries":[]}`,
	`{"version":1}`,
	`{}`,
	`null`,
	`[]`,
	`"x"`,
	`1`,
	`true`,
	``,
	`{"version":1,"entries":[]}}`,
	`{"version":1,"entries":[]} x`,
	`{"version":1,"entries":[],}`,
	`{"version":1,"entries":[{"name":"a","type":"dir"},]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir"}{"name":"b"}]}`,
	`{"version":1 "entries":[]}`,
	`{"version":1,"x":tru}`,
	`{"version":1,"x":nul}`,
	"\xef\xbb\xbf{\"version\":1}",
	`{version:1}`,
	`{"version":1,"x":[}`,
	`{"version":1,"x":{]}`,
	`{"version":1,"x":{"a"}}`,
	`{"version":1,"x":{"a":1,}}`,
	nested(maxJSONDepth - 1),
	nested(maxJSONDepth),
	`{"version":1,"entries":[{"name":"a","type":"dir","x":` + strings.Repeat("[", maxJSONDepth-3) + strings.Repeat("]", maxJSONDepth-3) + `}]}`,
	`{"version":1,"entries":[{"name":"a","type":"dir","x":` + strings.Repeat("[", maxJSONDepth-2) + strings.Repeat("]", maxJSONDepth-2) + `}]}`,
}

// nested is a TOC with an unknown field holding arrays nested so that
// the document is depth containers deep.
func nested(depth int) string {
	return `{"version":1,"x":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`
}

func TestDecodeTOCMatchesEncodingJSON(t *testing.T) {
	accepted := 0
	for _, js := range trickyTOCs {
		if checkDecodeMatchesJSON(t, []byte(js)) {
			accepted++
		}
	}
	for _, js := range fuzzSeedTOCs(t) {
		checkDecodeMatchesJSON(t, js)
	}
	// Both ways of failing a check must stay possible: a decoder that
	// refuses everything would pass the loop above.
	if accepted < 20 {
		t.Errorf("only %d of the tricky TOCs decoded", accepted)
	}
}

// FuzzDecodeTOCMatchesEncodingJSON looks for a TOC that decodeTOC reads
// otherwise than encoding/json: a parser differential would let one
// layer mean two things to Strata and to other eStargz tools.
func FuzzDecodeTOCMatchesEncodingJSON(f *testing.F) {
	for _, js := range trickyTOCs {
		f.Add([]byte(js))
	}
	for _, js := range fuzzSeedTOCs(f) {
		f.Add(js)
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		checkDecodeMatchesJSON(t, js)
	})
}

// checkDecodeMatchesJSON decodes js both ways and fails t unless they
// agree: the same entries when encoding/json accepts (with version 1 and
// no null entry, which the reader refused after it), an ErrInvalid when
// it does not. It reports whether js was accepted.
func checkDecodeMatchesJSON(t *testing.T, js []byte) bool {
	t.Helper()
	var want estargz.JTOC
	jerr := json.Unmarshal(js, &want)
	wantOK := jerr == nil && want.Version == 1 && !slices.Contains(want.Entries, nil)
	var got []tocEntry
	err := decodeTOC(context.Background(), newJSONReader(bytes.NewReader(js)), func(e *tocEntry) error {
		got = append(got, *e)
		return nil
	})
	if err != nil && !errors.Is(err, ErrInvalid) {
		t.Fatalf("%q: error does not wrap ErrInvalid: %v", js, err)
	}
	if !wantOK {
		if err == nil {
			t.Fatalf("%q: encoding/json refuses it (%v, version %d) but decodeTOC accepts it", js, jerr, want.Version)
		}
		return false
	}
	if err != nil {
		// The decoder's documented refusals of what encoding/json takes
		// that small inputs can reach: a second entries key, and a
		// version other than 1 before the list that a later version key
		// overwrites.
		if msg := err.Error(); strings.Contains(msg, "more than one entries list") || strings.Contains(msg, "before its entries") {
			return false
		}
		t.Fatalf("%q: encoding/json accepts it but decodeTOC refuses it: %v", js, err)
	}
	if len(got) != len(want.Entries) {
		t.Fatalf("%q: %d entries, encoding/json has %d", js, len(got), len(want.Entries))
	}
	for i, w := range want.Entries {
		g := got[i]
		same := g.Name == w.Name && g.Type == w.Type && g.Size == w.Size && g.ModTime3339 == w.ModTime3339 &&
			g.LinkName == w.LinkName && g.Mode == w.Mode && g.UID == int64(w.UID) && g.GID == int64(w.GID) &&
			g.Offset == w.Offset && g.InnerOffset == w.InnerOffset && g.DevMajor == int64(w.DevMajor) &&
			g.DevMinor == int64(w.DevMinor) && reflect.DeepEqual(g.Xattrs, w.Xattrs) &&
			g.ChunkOffset == w.ChunkOffset && g.ChunkSize == w.ChunkSize && g.ChunkDigest == w.ChunkDigest
		if !same {
			t.Fatalf("%q: entry %d is %+v, encoding/json has %+v", js, i, g, *w)
		}
	}
	return true
}
