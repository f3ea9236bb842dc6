package index

import (
	"bytes"
	"fmt"
	"slices"
)

// A gzip layer indexed for a list of files (WithListed) gets a checkpoint
// at the last DEFLATE block boundary before each listed file's data. The
// decoder learns which boundary that is only when the tar reader reaches
// the file's header, by when the chunks of the files before it (the
// boundary may lie some blocks back, inside them) would have gone to the
// builder: so, in this mode, entries and their chunks wait in a queue
// until the tar is holdReach past them, and a new checkpoint cuts the
// waiting chunk it falls in.

// holdReach is how far back in the tar a checkpoint before a listed file
// may be taken: a few DEFLATE blocks (gzip and Go write blocks of some
// dozens of KiB of output).
const holdReach = 256 << 10

// holdBack is the queue of entries on their way to the builder.
type holdBack struct {
	listed func(name string) bool
	// mark makes a checkpoint of a block boundary in (lo, at], if one is
	// worth it, and returns its tar offset.
	mark    func(lo, at int64) (int64, bool)
	entries []heldEntry
	done    int64 // where the chunks given to the builder end in the tar
}

// heldEntry is an entry not yet given to the builder (added false), or
// given with some of its chunks still waiting.
type heldEntry struct {
	name, raw string // clean, and as in the header (for messages)
	hd        header
	end       int64 // where its data ends in the tar
	added     bool
	pieces    []heldPiece
}

// heldPiece is a chunk's data at file offset off, tar offset tarOff.
type heldPiece struct {
	off, tarOff int64
	data        []byte
}

// add queues the entry named name (raw in its header) whose data starts
// at dataOff, after a checkpoint before it if it is listed, and reads its
// data.
func (q *holdBack) add(t *tarIndexer, name, raw string, hd header, dataOff int64) error {
	if hd.Size > 0 && q.listed(name) {
		q.markBefore(dataOff)
	}
	q.entries = append(q.entries, heldEntry{name: name, raw: raw, hd: hd, end: dataOff + hd.Size})
	if hd.Size > 0 {
		if err := t.addData(dataOff, hd.Size); err != nil {
			return fmt.Errorf("entry %q: %w", raw, err)
		}
	}
	return q.flush(t, t.pos()-holdReach)
}

// piece queues a chunk of the last entry, data copied.
func (q *holdBack) piece(t *tarIndexer, off, tarOff int64, data []byte) error {
	e := &q.entries[len(q.entries)-1]
	e.pieces = append(e.pieces, heldPiece{off: off, tarOff: tarOff, data: bytes.Clone(data)})
	// A big file goes on to the builder as it is read.
	return q.flush(t, tarOff+int64(len(data))-holdReach)
}

// markBefore asks for a checkpoint before tar offset at, after the chunks
// the builder has, and cuts the waiting chunk it falls in.
func (q *holdBack) markBefore(at int64) {
	lo := q.done
	for _, e := range q.entries {
		if len(e.pieces) > 0 {
			lo = e.pieces[0].tarOff
			break
		}
	}
	b, ok := q.mark(lo-1, at)
	if !ok {
		return
	}
	for i := range q.entries {
		e := &q.entries[i]
		for j, p := range e.pieces {
			if n := b - p.tarOff; n > 0 && n < int64(len(p.data)) {
				e.pieces = slices.Insert(e.pieces, j+1, heldPiece{off: p.off + n, tarOff: b, data: p.data[n:]})
				e.pieces[j].data = p.data[:n:n]
				return
			}
		}
	}
}

// flush gives the builder, in order, the entries and chunks that end
// before tar offset limit.
func (q *holdBack) flush(t *tarIndexer, limit int64) error {
	for len(q.entries) > 0 {
		e := &q.entries[0]
		if !e.added {
			if err := t.b.add(e.name, &e.hd); err != nil {
				return Invalidf("entry %q: %v", e.raw, err)
			}
			e.added = true
		}
		n := 0
		for _, p := range e.pieces {
			if p.tarOff+int64(len(p.data)) > limit {
				break
			}
			if err := t.addChunk(p.off, p.tarOff, p.data); err != nil {
				return fmt.Errorf("entry %q: %w", e.raw, err)
			}
			q.done = p.tarOff + int64(len(p.data))
			n++
		}
		e.pieces = e.pieces[n:]
		if len(e.pieces) > 0 || e.end > limit {
			return nil // the entry being read is always past limit
		}
		q.entries = q.entries[1:]
	}
	return nil
}
