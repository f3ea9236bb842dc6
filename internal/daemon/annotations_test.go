package daemon

import (
	"testing"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/internal/convert"
	"github.com/stratafs/strata/snapshotter"
)

// The writers of eStargz layers (convert, and the snapshotter's layer
// writer for commit and build) name the TOC offset as the reader looks for
// it: the packages may not import one another, so each has its constant.
func TestTOCOffsetAnnotationAgrees(t *testing.T) {
	want := index.AnnotationEStargzTOCOffset
	for writer, got := range map[string]string{"convert": convert.AnnotationTOCOffset, "snapshotter": snapshotter.AnnotationTOCOffset} {
		if got != want {
			t.Errorf("%s writes %q, the reader looks for %q", writer, got, want)
		}
	}
}
