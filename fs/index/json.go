package index

import (
	"fmt"
	"io"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonReader reads one JSON value from a stream, token by token, so that
// a TOC is decoded while it is being decompressed, without holding its
// JSON text or a generic tree of it.
//
// It accepts exactly what encoding/json accepts (RFC 8259, containers
// nested at most maxJSONDepth deep) and decodes strings the same way:
// escapes resolved, invalid UTF-8 and unpaired surrogates replaced by
// U+FFFD. The TOC decoder on top of it (tocDecoder) follows
// encoding/json's rules for fields too, so that Strata and estargz's own
// parser never read one TOC two ways.
//
// Syntax errors wrap ErrInvalid and say "decoding TOC JSON"; an error of
// the source is returned as it is.
type jsonReader struct {
	src   io.Reader
	buf   []byte // buf[pos:end] is read from src and not yet consumed
	pos   int
	end   int
	off   int64 // input offset of buf[0], for error messages
	err   error // what src returned with its last bytes (io.EOF at the end)
	depth int   // containers open around the current position
	str   []byte
}

const (
	jsonBufSize = 64 << 10
	// maxJSONDepth is encoding/json's nesting limit. It also keeps
	// skipValue's stack bounded on a hostile "[[[[...".
	maxJSONDepth = 10000
)

func newJSONReader(src io.Reader) *jsonReader {
	return &jsonReader{src: src, buf: make([]byte, jsonBufSize)}
}

func (r *jsonReader) syntaxErr(format string, args ...any) error {
	return fmt.Errorf("%w: decoding TOC JSON: at byte %d: %s", ErrInvalid, r.off+int64(r.pos), fmt.Sprintf(format, args...))
}

// fill reads more input after the unconsumed bytes. It returns false when
// nothing more can be read: at the end of the input or after a read error
// (both in r.err).
func (r *jsonReader) fill() bool {
	if r.err != nil {
		return false
	}
	if r.pos > 0 {
		n := copy(r.buf, r.buf[r.pos:r.end])
		r.off += int64(r.pos)
		r.pos, r.end = 0, n
	}
	if r.end == len(r.buf) { // never so far: every caller consumes as it goes
		r.buf = append(r.buf, make([]byte, len(r.buf))...)
	}
	for range maxEmptyReads {
		n, err := r.src.Read(r.buf[r.end:])
		r.end += n
		if err != nil {
			r.err = err
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	r.err = io.ErrNoProgress
	return false
}

// maxEmptyReads is how many reads may return nothing before the source is
// taken to be broken, as in bufio.
const maxEmptyReads = 100

// ensure makes n bytes available, unless the input ends first.
func (r *jsonReader) ensure(n int) {
	for r.end-r.pos < n && r.fill() {
	}
}

// unexpectedEnd is the error for input that ends inside a value: the
// source's own error if it failed, else a syntax error.
func (r *jsonReader) unexpectedEnd() error {
	if r.err != nil && r.err != io.EOF {
		return r.err
	}
	return r.syntaxErr("unexpected end of JSON input")
}

// peek skips whitespace and returns the next byte without consuming it.
func (r *jsonReader) peek() (byte, error) {
	for {
		for r.pos < r.end {
			switch c := r.buf[r.pos]; c {
			case ' ', '\t', '\n', '\r':
				r.pos++
			default:
				return c, nil
			}
		}
		if !r.fill() {
			return 0, r.unexpectedEnd()
		}
	}
}

// consume skips whitespace and then the byte c, which must come next.
func (r *jsonReader) consume(c byte) error {
	got, err := r.peek()
	if err != nil {
		return err
	}
	if got != c {
		return r.syntaxErr("invalid character %q, expected %q", got, c)
	}
	r.pos++
	return nil
}

// atEnd checks that only whitespace is left in the input.
func (r *jsonReader) atEnd() error {
	c, err := r.peek()
	if err == nil {
		return r.syntaxErr("invalid character %q after top-level value", c)
	}
	if r.err == io.EOF {
		return nil
	}
	return err
}

// literal consumes null, true or false, whichever comes next.
func (r *jsonReader) literal() error {
	c, err := r.peek()
	if err != nil {
		return err
	}
	var want string
	switch c {
	case 'n':
		want = "null"
	case 't':
		want = "true"
	case 'f':
		want = "false"
	default:
		return r.syntaxErr("invalid character %q looking for beginning of value", c)
	}
	r.ensure(len(want))
	if r.end-r.pos < len(want) || string(r.buf[r.pos:r.pos+len(want)]) != want {
		return r.syntaxErr("invalid literal, expected %s", want)
	}
	r.pos += len(want)
	return nil
}

// object reads the object that comes next, calling member for each key
// with the reader at the key's value, which member must consume. The key
// is decoded up to keep bytes (whole says if that is all of it) and is
// valid only during the call.
func (r *jsonReader) object(keep int, member func(key []byte, whole bool) error) error {
	return r.container('{', '}', func() error {
		key, whole, err := r.readString(keep)
		if err == nil {
			err = r.consume(':')
		}
		if err == nil {
			err = member(key, whole)
		}
		return err
	})
}

// array reads the array that comes next, calling elem with the reader at
// each element, which elem must consume.
func (r *jsonReader) array(elem func() error) error {
	return r.container('[', ']', elem)
}

func (r *jsonReader) container(open, close byte, item func() error) error {
	if r.depth == maxJSONDepth {
		return r.syntaxErr("exceeded max depth")
	}
	if err := r.consume(open); err != nil {
		return err
	}
	r.depth++
	defer func() { r.depth-- }()
	c, err := r.peek()
	if err != nil {
		return err
	}
	if c == close {
		r.pos++
		return nil
	}
	for {
		if err := item(); err != nil {
			return err
		}
		if c, err = r.peek(); err != nil {
			return err
		}
		r.pos++
		if c == close {
			return nil
		}
		if c != ',' {
			return r.syntaxErr("invalid character %q after an element of an object or array", c)
		}
	}
}

// readString reads the string that comes next and returns up to keep bytes of
// it decoded, valid until the next call, and whether that is all of it.
func (r *jsonReader) readString(keep int) (s []byte, whole bool, err error) {
	if err := r.consume('"'); err != nil {
		return nil, false, err
	}
	r.str = r.str[:0]
	whole = true
	for {
		i, chunk := 0, r.buf[r.pos:r.end]
		for i < len(chunk) && chunk[i] != '"' && chunk[i] != '\\' && chunk[i] >= 0x20 && chunk[i] < utf8.RuneSelf {
			i++
		}
		r.appendKept(chunk[:i], keep, &whole)
		r.pos += i
		if i == len(chunk) {
			if !r.fill() {
				return nil, false, r.unexpectedEnd()
			}
			continue
		}
		var err error
		switch c := chunk[i]; {
		case c == '"':
			r.pos++
			return r.str, whole, nil
		case c == '\\':
			err = r.escape(keep, &whole)
		case c < 0x20:
			err = r.syntaxErr("invalid character %q in string literal", c)
		default:
			r.ensure(utf8.UTFMax)
			rn, size := utf8.DecodeRune(r.buf[r.pos:r.end])
			if rn == utf8.RuneError && size == 1 {
				r.keepRune(rn, keep, &whole)
			} else {
				r.appendKept(r.buf[r.pos:r.pos+size], keep, &whole)
			}
			r.pos += size
		}
		if err != nil {
			return nil, false, err
		}
	}
}

// appendKept appends b to the string being read, as far as keep bytes go.
func (r *jsonReader) appendKept(b []byte, keep int, whole *bool) {
	if room := keep - len(r.str); len(b) > room {
		b = b[:max(room, 0)]
		*whole = false
	}
	r.str = append(r.str, b...)
}

func (r *jsonReader) keepRune(rn rune, keep int, whole *bool) {
	var b [utf8.UTFMax]byte
	r.appendKept(b[:utf8.EncodeRune(b[:], rn)], keep, whole)
}

// escape decodes the escape sequence that starts at r.pos.
func (r *jsonReader) escape(keep int, whole *bool) error {
	r.ensure(2)
	if r.end-r.pos < 2 {
		return r.unexpectedEnd()
	}
	var dec byte
	switch c := r.buf[r.pos+1]; c {
	case '"', '\\', '/':
		dec = c
	case 'b':
		dec = '\b'
	case 'f':
		dec = '\f'
	case 'n':
		dec = '\n'
	case 'r':
		dec = '\r'
	case 't':
		dec = '\t'
	case 'u':
		return r.escapeU(keep, whole)
	default:
		return r.syntaxErr("invalid escape \\%c in string", c)
	}
	r.appendKept([]byte{dec}, keep, whole)
	r.pos += 2
	return nil
}

// escapeU decodes a \uXXXX escape and, for a surrogate, the low half that
// may follow. As in encoding/json, a valid pair is one rune; any other
// surrogate is U+FFFD, and what follows it is read on its own.
func (r *jsonReader) escapeU(keep int, whole *bool) error {
	rn := r.hex4()
	if rn < 0 {
		return r.syntaxErr("invalid \\u escape in string")
	}
	r.pos += 6
	if utf16.IsSurrogate(rn) {
		pair := utf8.RuneError
		if lo := r.hex4(); lo >= 0 {
			pair = utf16.DecodeRune(rn, lo)
		}
		if pair != utf8.RuneError {
			r.pos += 6
		}
		rn = pair
	}
	r.keepRune(rn, keep, whole)
	return nil
}

// hex4 returns the rune of the \uXXXX escape at r.pos, or -1 if there is
// none.
func (r *jsonReader) hex4() rune {
	r.ensure(6)
	if r.end-r.pos < 6 || r.buf[r.pos] != '\\' || r.buf[r.pos+1] != 'u' {
		return -1
	}
	var rn rune
	for _, c := range r.buf[r.pos+2 : r.pos+6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		rn = rn<<4 | rune(c)
	}
	return rn
}

// skipValue checks and consumes the value that comes next, of any kind.
// It does not recurse: the containers it is inside are a stack of their
// closing bytes.
func (r *jsonReader) skipValue() error {
	var closers []byte
	for {
		opened, err := r.skipStart(&closers)
		if err != nil {
			return err
		}
		if opened {
			continue // the container's first element follows
		}
		for done := false; !done; {
			if len(closers) == 0 {
				return nil
			}
			c, err := r.peek()
			if err != nil {
				return err
			}
			r.pos++
			top := closers[len(closers)-1]
			switch {
			case c == top:
				closers = closers[:len(closers)-1]
			case c != ',':
				return r.syntaxErr("invalid character %q after an element of an object or array", c)
			case top == '}':
				err, done = r.skipKey(), true
			default:
				done = true
			}
			if err != nil {
				return err
			}
		}
	}
}

// skipStart consumes a scalar or an empty container, or opens a
// non-empty one (pushing its closer and, for an object, reading its
// first key) and reports that it did.
func (r *jsonReader) skipStart(closers *[]byte) (opened bool, err error) {
	c, err := r.peek()
	if err != nil {
		return false, err
	}
	switch c {
	case '{', '[':
		if r.depth+len(*closers) == maxJSONDepth {
			return false, r.syntaxErr("exceeded max depth")
		}
		r.pos++
		closer := c + 2 // '}' follows '{' by 2 in ASCII, ']' follows '['
		next, err := r.peek()
		if err != nil {
			return false, err
		}
		if next == closer {
			r.pos++
			return false, nil
		}
		*closers = append(*closers, closer)
		if c == '{' {
			return true, r.skipKey()
		}
		return true, nil
	case '"':
		_, _, err = r.readString(0)
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		_, err = r.number(0)
	default:
		err = r.literal()
	}
	return false, err
}

// skipKey consumes an object key and its colon.
func (r *jsonReader) skipKey() error {
	if _, _, err := r.readString(0); err != nil {
		return err
	}
	return r.consume(':')
}
