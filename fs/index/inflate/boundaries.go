package inflate

import (
	"bytes"
	"slices"
)

// A caller that learns only after the decoder has passed a place that it
// wants a checkpoint there (an indexer reads a tar header after the
// decoder has produced the bytes around it) asks the Reader to keep the
// recent block boundaries it passed, and takes one of them afterwards.

// maxKept bounds the boundaries kept at once: with blocks of a few KiB of
// output (a stream of tiny blocks), the oldest go first.
const maxKept = 64

// KeepBoundaries makes the Reader keep a Checkpoint at every block
// boundary and member start it passes, for as long as it has decoded at
// most reach bytes of output past it (and of those, the latest maxKept),
// for CheckpointBefore to hand out. As for the checkpoints it reports,
// the Reader watches the references into their windows and zeroes the
// bytes nothing refers to (windowuse.go). Call it before the first Read.
func (z *Reader) KeepBoundaries(reach int64) { z.keepReach = reach }

// CheckpointBefore returns the latest boundary kept (see KeepBoundaries)
// whose Out is in (lo, hi], and forgets it and every one before it. The
// caller owns the returned checkpoint, window included, but the Reader
// may still zero bytes of the window, as it does those of the checkpoints
// it reports (see NewReader).
func (z *Reader) CheckpointBefore(lo, hi int64) (Checkpoint, bool) {
	i, _ := slices.BinarySearchFunc(z.kept, hi+1, func(cp Checkpoint, out int64) int {
		if cp.Out < out {
			return -1
		}
		return 1
	})
	if i == 0 || z.kept[i-1].Out <= lo {
		return Checkpoint{}, false
	}
	cp := z.kept[i-1]
	z.recycle(z.kept[:i-1])
	z.kept = slices.Delete(z.kept, 0, i)
	return cp, true
}

// keepBoundary keeps a checkpoint at the current position (see
// checkpoint) and drops those too far behind.
func (z *Reader) keepBoundary(atMember bool, in int64) {
	n := 0
	for n < len(z.kept) && (z.out()-z.kept[n].Out > z.keepReach || len(z.kept)-n >= maxKept) {
		n++
	}
	z.recycle(z.kept[:n])
	z.kept = slices.Delete(z.kept, 0, n)
	cp := z.here(atMember, in)
	if !atMember {
		var w []byte
		if k := len(z.spare); k > 0 {
			w, z.spare = z.spare[k-1][:0], z.spare[:k-1]
		}
		cp.Window = append(w, z.hist[max(z.lo, z.wr-windowSize):z.wr]...)
		if len(cp.Window) > 0 && len(z.uses) < maxUses {
			z.uses = append(z.uses, newWindowUse(cp.Window, cp.Out))
		}
	}
	z.kept = append(z.kept, cp)
}

// here is a checkpoint at the current position, without its window. At a
// member start, in is the offset of the member's header.
func (z *Reader) here(atMember bool, in int64) Checkpoint {
	cp := Checkpoint{Out: z.out(), AtMember: atMember, In: in}
	if !atMember {
		pos := z.in.bitPos()
		z.updateCRC()
		cp.In, cp.Bits = pos/8, uint8(pos%8)
		cp.MemberOut = z.out() - z.memberStart
		cp.CRC = z.crc
	}
	return cp
}

// recycle keeps the windows of cps, which are dropped, for reuse: those
// that are no longer watched (a watched one is still written to).
func (z *Reader) recycle(cps []Checkpoint) {
	for _, cp := range cps {
		if len(cp.Window) > 0 && !slices.ContainsFunc(z.uses, func(u *windowUse) bool { return &u.window[0] == &cp.Window[0] }) {
			z.spare = append(z.spare, cp.Window)
		}
	}
}

// cloneWindow is the window at the current position, as a checkpoint
// reported to the caller has it.
func (z *Reader) cloneWindow() []byte {
	return bytes.Clone(z.hist[max(z.lo, z.wr-windowSize):z.wr])
}
