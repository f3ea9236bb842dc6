package index

import (
	"encoding/base64"
	"io"
	"strconv"
)

// Typed values, decoded as encoding/json decodes them into Go fields.

const (
	// maxJSONString bounds a string value the TOC decoder keeps, so that
	// a hostile one is not held. Every field it keeps has a far smaller
	// limit where the converter uses it (names and link targets
	// MaxPathLen, xattr values MaxXattrSize as base64, digests and times
	// less); a longer string in a field the converter ignores (a
	// directory's linkName, say) is refused too, where encoding/json
	// would have let it pass.
	maxJSONString = 1 << 20
	// maxIntLiteral bounds the literal of an integer field: an int64 has
	// at most 20 characters, and JSON allows no leading zeros.
	maxIntLiteral = 32
)

// int64Value reads the value of an integer field: null (ok is false; the
// field keeps its value) or a number that is an integer within int64.
func (r *jsonReader) int64Value() (n int64, ok bool, err error) {
	c, err := r.peek()
	if err != nil {
		return 0, false, err
	}
	if c == 'n' {
		return 0, false, r.literal()
	}
	if c != '-' && (c < '0' || c > '9') {
		return 0, false, r.syntaxErr("cannot decode a %s into an integer field", kindOf(c))
	}
	lit, err := r.number(maxIntLiteral)
	if err != nil {
		return 0, false, err
	}
	if n, ok := smallInt(lit); ok {
		return n, true, nil
	}
	n, err = strconv.ParseInt(string(lit), 10, 64)
	if err != nil || len(lit) == maxIntLiteral {
		return 0, false, r.syntaxErr("cannot decode number %s into an int64 field", lit)
	}
	return n, true, nil
}

// smallInt parses a literal of at most 18 digits, which cannot overflow,
// and nothing but digits after an optional minus: the common case, done
// without strconv's string conversion.
func smallInt(lit []byte) (int64, bool) {
	digits := lit
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if len(digits) < len(lit) {
		n = -n
	}
	return n, true
}

// stringValue reads the value of a string field: null (ok is false; the
// field keeps its value) or a string, decoded, valid until the next read.
func (r *jsonReader) stringValue() (s []byte, ok bool, err error) {
	c, err := r.peek()
	if err != nil {
		return nil, false, err
	}
	switch c {
	case '"':
		s, whole, err := r.readString(maxJSONString)
		if err == nil && !whole {
			err = r.syntaxErr("string of more than %d bytes", maxJSONString)
		}
		return s, err == nil, err
	case 'n':
		return nil, false, r.literal()
	}
	return nil, false, r.syntaxErr("cannot decode a %s into a string field", kindOf(c))
}

// bytesValue reads the value of a []byte field: null (nil) or a string of
// standard base64, which encoding/json decodes with
// base64.StdEncoding.Decode (ignoring CR and LF).
func (r *jsonReader) bytesValue() ([]byte, error) {
	s, ok, err := r.stringValue()
	if !ok || err != nil {
		return nil, err
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(b, s)
	if err != nil {
		return nil, r.syntaxErr("base64 value: %v", err)
	}
	return b[:n], nil
}

// kindOf names the JSON kind of a value that starts with c, for errors.
func kindOf(c byte) string {
	switch c {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// number reads the number that comes next and returns up to keep bytes
// of its literal, valid until the next read.
func (r *jsonReader) number(keep int) ([]byte, error) {
	r.str = r.str[:0]
	state := numStart
	for {
		if r.pos == r.end && !r.fill() {
			if r.err != io.EOF {
				return nil, r.unexpectedEnd()
			}
			break // the input may end right after a top-level number
		}
		next := numberStep(state, r.buf[r.pos])
		if next == numEnd {
			break
		}
		if next == numBad {
			return nil, r.syntaxErr("invalid character %q in numeric literal", r.buf[r.pos])
		}
		if len(r.str) < keep {
			r.str = append(r.str, r.buf[r.pos])
		}
		state = next
		r.pos++
	}
	if !numComplete[state] {
		if r.pos == r.end {
			return nil, r.unexpectedEnd()
		}
		return nil, r.syntaxErr("invalid character %q in numeric literal", r.buf[r.pos])
	}
	return r.str, nil
}

// The states of reading a number literal (RFC 8259 section 6).
const (
	numStart = iota // nothing yet
	numMinus        // "-"
	numZero         // a leading 0, which nothing but "." or an exponent may follow
	numInt          // digits of the integer part
	numDot          // "."
	numFrac         // digits after the point
	numE            // "e" or "E"
	numESign        // the exponent's sign
	numExp          // exponent digits
	numEnd          // the byte is not part of the number
	numBad          // the byte makes the literal invalid
	numStates
)

// numComplete holds the states a literal may end in.
var numComplete = [numStates]bool{numZero: true, numInt: true, numFrac: true, numExp: true}

func numberStep(state int, c byte) int {
	digit := '0' <= c && c <= '9'
	switch state {
	case numStart, numMinus:
		switch {
		case c == '-' && state == numStart:
			return numMinus
		case c == '0':
			return numZero
		case digit:
			return numInt
		}
		return numBad
	case numZero, numInt:
		switch {
		case digit && state == numInt:
			return numInt
		case c == '.':
			return numDot
		case c == 'e' || c == 'E':
			return numE
		}
	case numDot:
		if digit {
			return numFrac
		}
		return numBad
	case numFrac:
		switch {
		case digit:
			return numFrac
		case c == 'e' || c == 'E':
			return numE
		}
	case numE, numESign:
		switch {
		case digit:
			return numExp
		case (c == '+' || c == '-') && state == numE:
			return numESign
		}
		return numBad
	case numExp:
		if digit {
			return numExp
		}
	}
	return numEnd
}
