package inflate

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// sampleCheckpoints are checkpoints of each kind: at a member start, and
// inside members with no window, a short one and a full one.
func sampleCheckpoints() []Checkpoint {
	text := textBytes(40000, 20)
	return []Checkpoint{
		{AtMember: true},
		{In: 1 << 40, Out: 1 << 50, AtMember: true},
		{In: 10, Bits: 3, Out: 7, MemberOut: 0, Window: []byte{}},
		{In: 12345, Bits: 7, Out: 1000, MemberOut: 100, CRC: 0xdeadbeef, Window: text[:100]},
		{In: 1 << 33, Out: 1<<34 + 5, MemberOut: 1 << 34, CRC: 1, Window: text[:windowSize]},
	}
}

func sameCheckpoint(a, b Checkpoint) bool {
	return a.In == b.In && a.Bits == b.Bits && a.Out == b.Out && a.AtMember == b.AtMember &&
		a.MemberOut == b.MemberOut && a.CRC == b.CRC && bytes.Equal(a.Window, b.Window)
}

// TestCheckpointEncoding round-trips checkpoints through their encoding.
func TestCheckpointEncoding(t *testing.T) {
	for _, cp := range sampleCheckpoints() {
		enc, err := cp.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Checkpoint
		if err := got.UnmarshalBinary(enc); err != nil {
			t.Fatalf("%+v: %v", brief(cp), err)
		}
		if !sameCheckpoint(got, cp) {
			t.Errorf("%+v: round trip gives %+v", brief(cp), brief(got))
		}
		if len(cp.Window) == windowSize && len(enc) > windowSize/2 {
			t.Errorf("a text window encodes in %d bytes", len(enc))
		}
		// AppendBinary appends.
		if enc2, _ := cp.AppendBinary([]byte("x")); !bytes.Equal(enc2[1:], enc) {
			t.Errorf("AppendBinary differs from MarshalBinary")
		}
	}
}

// TestCheckpointRefused are encodings and checkpoints that are not
// possible, each refused with ErrCheckpoint.
func TestCheckpointRefused(t *testing.T) {
	valid := sampleCheckpoints()[3]
	enc, err := valid.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	head := func(flags, bits byte, in, out uint64) []byte {
		b := []byte{encodingVersion, flags, bits}
		return binary.AppendUvarint(binary.AppendUvarint(b, in), out)
	}
	window := func(memberOut uint64, data []byte) []byte {
		b := binary.AppendUvarint(head(0, 0, 10, 1000), memberOut)
		b = binary.LittleEndian.AppendUint32(b, 0)
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestSpeed)
		_, _ = w.Write(data)
		_ = w.Close()
		return append(b, buf.Bytes()...)
	}
	encodings := map[string][]byte{
		"empty":             nil,
		"version":           append([]byte{2}, enc[1:]...),
		"flags":             append([]byte{1, 2}, enc[2:]...),
		"bits 8":            head(0, 8, 10, 10),
		"bits at member":    head(flagAtMember, 1, 10, 10),
		"truncated in":      {1, 0, 0, 0x80},
		"in overflows":      append([]byte{1, 0, 0}, bytes.Repeat([]byte{0xff}, 11)...),
		"negative in":       head(flagAtMember, 0, 1<<63, 0),
		"negative out":      head(flagAtMember, 0, 0, 1<<63),
		"member trailing":   append(head(flagAtMember, 0, 1, 2), 0),
		"member past out":   window(1001, make([]byte, 1000)),
		"truncated crc":     binary.AppendUvarint(head(0, 0, 10, 1000), 1),
		"window too short":  window(100, make([]byte, 99)),
		"window too long":   window(100, make([]byte, 101)),
		"window over 32KiB": window(1000, make([]byte, windowSize+1)),
		"window trailing":   append(bytes.Clone(enc), 0),
		"window truncated":  enc[:len(enc)-1],
		"window corrupt":    append(binary.LittleEndian.AppendUint32(binary.AppendUvarint(head(0, 0, 10, 1000), 100), 0), 0xff, 0xff),
	}
	for name, b := range encodings {
		cp := valid
		if err := cp.UnmarshalBinary(b); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("%s: %v, want ErrCheckpoint", name, err)
		} else if !sameCheckpoint(cp, valid) {
			t.Errorf("%s: the refused encoding changed the checkpoint", name)
		}
	}

	checkpoints := map[string]Checkpoint{
		"negative in":         {In: -1, AtMember: true},
		"negative out":        {Out: -1, AtMember: true},
		"bits 8":              {Bits: 8, MemberOut: 0},
		"member with window":  {AtMember: true, Window: []byte{1}},
		"member with crc":     {AtMember: true, CRC: 1},
		"member output > out": {Out: 5, MemberOut: 6, Window: make([]byte, 6)},
		"window short":        {Out: 5, MemberOut: 5, Window: make([]byte, 4)},
		"window long":         {Out: 1 << 20, MemberOut: 1 << 20, Window: make([]byte, windowSize+1)},
	}
	for name, cp := range checkpoints {
		if _, err := Resume(bytes.NewReader(nil), cp); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("Resume, %s: %v, want ErrCheckpoint", name, err)
		}
		if _, err := cp.MarshalBinary(); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("MarshalBinary, %s: %v, want ErrCheckpoint", name, err)
		}
	}
}

// TestCheckpointSize measures the encoded checkpoints of a real layer, a
// tar of GOROOT/src gzipped, at 4 MiB spacing: the index they make must
// stay under 2% of the compressed layer. The layer is 64 MiB of tar (8
// with -short).
func TestCheckpointSize(t *testing.T) {
	size := 64 << 20
	if testing.Short() || raceEnabled {
		size = 8 << 20 // compress/gzip is slow under the race detector
	}
	tarball := tarDir(t, goSrc(t, ""), size)
	data := gzipLevel(t, tarball, gzip.BestSpeed)
	var total, n int
	zr, err := NewReader(bytes.NewReader(data), 4<<20, func(cp Checkpoint) error {
		enc, err := cp.MarshalBinary()
		total += len(enc)
		n++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zr.WriteTo(io.Discard); err != nil {
		t.Fatal(err)
	}
	pct := 100 * float64(total) / float64(len(data))
	t.Logf("%d bytes of tar, %d gzipped: %d checkpoints, %d bytes each on average, %.2f%% of the compressed size",
		len(tarball), len(data), n, total/n, pct)
	if pct > 2 {
		t.Errorf("checkpoints are %.2f%% of the compressed layer", pct)
	}
}
