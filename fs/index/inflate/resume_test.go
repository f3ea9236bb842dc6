package inflate

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

// checkResume fails unless resuming from every checkpoint, with all the
// compressed bytes from its In on, gives exactly the rest of out, and with
// only the bytes up to the next checkpoint's In (plus slack), gives at
// least the output up to the next checkpoint.
func checkResume(t *testing.T, data, out []byte, cps []Checkpoint) {
	t.Helper()
	for i, cp := range cps {
		zr, err := Resume(bytes.NewReader(data[cp.In:]), cp)
		if err != nil {
			t.Fatalf("checkpoint %d %+v: Resume: %v", i, brief(cp), err)
		}
		got, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("checkpoint %d %+v: %v after %d bytes", i, brief(cp), err, len(got))
		}
		if d := firstDiff(got, out[cp.Out:]); d >= 0 {
			t.Fatalf("checkpoint %d %+v: output differs at %d (lengths %d, %d)", i, brief(cp), d, len(got), len(out[cp.Out:]))
		}

		next := Checkpoint{In: int64(len(data)), Out: int64(len(out))}
		if i+1 < len(cps) {
			next = cps[i+1]
		}
		for _, slack := range []int64{0, 1, 8} {
			end := min(next.In+slack, int64(len(data)))
			if next.Bits > 0 && slack == 0 {
				continue // the byte at next.In holds bits of this span
			}
			zr, err := Resume(bytes.NewReader(data[cp.In:end]), cp)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("span %d +%d: %v after %d bytes", i, slack, err, len(got))
			}
			span := next.Out - cp.Out
			if int64(len(got)) < span || !bytes.Equal(got, out[cp.Out:cp.Out+int64(len(got))]) {
				t.Fatalf("span %d +%d (%+v to %+v): %d bytes, want %d of the output", i, slack, brief(cp), brief(next), len(got), span)
			}
		}
	}
}

// brief is a checkpoint without its window, to print.
func brief(cp Checkpoint) Checkpoint {
	cp.Window = cp.Window[:0:0]
	return cp
}

// TestResumeEveryCheckpoint resumes from every block boundary of streams
// of each kind of block.
func TestResumeEveryCheckpoint(t *testing.T) {
	text := textBytes(600<<10, 3)
	for _, level := range []int{gzip.NoCompression, gzip.HuffmanOnly, gzip.BestSpeed, gzip.DefaultCompression, gzip.BestCompression} {
		data := gzipLevel(t, text, level)
		out, cps := checkSame(t, data, 0)
		if len(cps) < 3 {
			t.Fatalf("level %d: only %d checkpoints", level, len(cps))
		}
		checkResume(t, data, out, cps)
	}
}
