package fs

import (
	"sync/atomic"

	"github.com/stratafs/strata/fs/index"
)

// View is what a mounted layer reads its index through: the on-disk
// *index.Layer normally, an *index.Memory while a new index is being saved.
type View interface {
	Info() index.Info
	Entry(ino uint64) (index.Entry, error)
	Lookup(parent uint64, name string) (index.Entry, bool, error)
	ReadDir(ino uint64) ([]index.Dirent, error)
	Chunks(ino uint64, off, n int64) ([]index.Chunk, error)
	ChunksInBlob(from, to int64, max int) ([]index.BlobChunk, error)
	Checkpoint(in int64) (index.Checkpoint, error)
}

var (
	_ View = (*index.Layer)(nil)
	_ View = (*index.Memory)(nil)
	_ View = (*swapView)(nil)
)

// swapView forwards to a view that can be replaced while the layer is
// mounted: from the in-memory index to the saved one, same content.
type swapView struct {
	cur atomic.Pointer[View]
}

func newSwapView(v View) *swapView {
	s := &swapView{}
	s.set(v)
	return s
}

func (s *swapView) set(v View)       { s.cur.Store(&v) }
func (s *swapView) view() View       { return *s.cur.Load() }
func (s *swapView) Info() index.Info { return s.view().Info() }

func (s *swapView) Entry(ino uint64) (index.Entry, error) { return s.view().Entry(ino) }

func (s *swapView) Lookup(parent uint64, name string) (index.Entry, bool, error) {
	return s.view().Lookup(parent, name)
}

func (s *swapView) ReadDir(ino uint64) ([]index.Dirent, error) { return s.view().ReadDir(ino) }

func (s *swapView) Chunks(ino uint64, off, n int64) ([]index.Chunk, error) {
	return s.view().Chunks(ino, off, n)
}

func (s *swapView) ChunksInBlob(from, to int64, max int) ([]index.BlobChunk, error) {
	return s.view().ChunksInBlob(from, to, max)
}

func (s *swapView) Checkpoint(in int64) (index.Checkpoint, error) { return s.view().Checkpoint(in) }
