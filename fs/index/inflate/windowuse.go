package inflate

// A checkpoint's window is the 32 KiB of output before it, which the
// output after it may refer back to. Only the first windowSize bytes of
// output after the checkpoint can reach into the window (a DEFLATE
// distance is at most windowSize), and they refer to part of it only:
// the rest of the window is never read by a decoder resumed there. The
// Reader watches those references and zeroes the bytes none of them
// reached, so the stored window compresses to what a resume needs. This
// is what lets checkpoints be dense and the index small (issue: an index
// at most 2% of its layer).

// maxUses bounds the windows watched at once: checkpoints closer together
// than windowSize (only when asked for at every block boundary) keep the
// rest of their windows whole, so that a stream of tiny blocks costs no
// more than a few watches per back-reference.
const maxUses = 4

// windowUse watches the references into one checkpoint's window.
type windowUse struct {
	window []byte   // the checkpoint's, shared with whoever it was handed to
	end    int64    // output offset of the checkpoint: window ends here
	used   []uint64 // bit i: window[i] was referred to
}

func newWindowUse(window []byte, end int64) *windowUse {
	return &windowUse{window: window, end: end, used: make([]uint64, (len(window)+63)/64)}
}

// mark notes a copy of length bytes from output offset src.
func (u *windowUse) mark(src int64, length int) {
	start := u.end - int64(len(u.window))
	from, to := max(src, start), min(src+int64(length), u.end)
	for i := from - start; i < to-start; i++ {
		u.used[i/64] |= 1 << (i % 64)
	}
}

// finish zeroes the bytes of the window nothing referred to.
func (u *windowUse) finish() {
	for k, word := range u.used {
		at := k * 64
		part := u.window[at:min(at+64, len(u.window))]
		switch word {
		case ^uint64(0):
		case 0:
			clear(part)
		default:
			for i := range part {
				if word&(1<<i) == 0 {
					part[i] = 0
				}
			}
		}
	}
}

// markUses notes a copy of length bytes from distance back at the
// current output offset in every window being watched.
func (z *Reader) markUses(distance, length int) {
	src := z.out() - int64(distance)
	for _, u := range z.uses {
		u.mark(src, length)
	}
}

// retireUses finishes the windows whose checkpoints the output is now
// more than windowSize bytes past (all of them when all is set: at a
// member's end, which no reference crosses, and where the decoder stops).
func (z *Reader) retireUses(all bool) {
	n := 0
	for _, u := range z.uses {
		if all || z.out()-u.end >= windowSize {
			u.finish()
			continue
		}
		z.uses[n] = u
		n++
	}
	clear(z.uses[n:])
	z.uses = z.uses[:n]
}
