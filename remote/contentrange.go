package remote

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// contentRange is a parsed "Content-Range: bytes first-last/size" header
// (RFC 9110 §14.4). Size is -1 when the server sent "*".
type contentRange struct {
	First, Last, Size int64
}

func (c contentRange) String() string {
	size := "*"
	if c.Size >= 0 {
		size = strconv.FormatInt(c.Size, 10)
	}
	return fmt.Sprintf("bytes %d-%d/%s", c.First, c.Last, size)
}

var errBadContentRange = errors.New("malformed Content-Range")

// parseContentRange parses the satisfied-range form only; the "bytes */size"
// form belongs to 416 responses, which never carry data. The header comes
// from an untrusted server, so every number is checked: digits only, no
// overflow, first <= last < size.
func parseContentRange(h string) (contentRange, error) {
	bad := func(why string) (contentRange, error) {
		return contentRange{}, fmt.Errorf("%w %q: %s", errBadContentRange, h, why)
	}
	unit, spec, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad("unit is not bytes")
	}
	rng, size, ok := strings.Cut(spec, "/")
	if !ok {
		return bad("no /size")
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return bad("no first-last")
	}
	var c contentRange
	var err error
	if c.First, err = parseDigits(first); err != nil {
		return bad("first byte: " + err.Error())
	}
	if c.Last, err = parseDigits(last); err != nil {
		return bad("last byte: " + err.Error())
	}
	if c.First > c.Last {
		return bad("first byte after last byte")
	}
	if size == "*" {
		c.Size = -1
		return c, nil
	}
	if c.Size, err = parseDigits(size); err != nil {
		return bad("size: " + err.Error())
	}
	if c.Last >= c.Size {
		return bad("range ends past size")
	}
	return c, nil
}

// parseDigits accepts only ASCII digits: strconv.ParseInt alone would also
// take a sign, which a byte position never has.
func parseDigits(s string) (int64, error) {
	if s == "" {
		return 0, errors.New("empty number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a decimal number")
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errors.New("number out of range")
	}
	return n, nil
}
