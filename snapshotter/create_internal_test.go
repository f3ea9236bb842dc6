package snapshotter

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
)

func parentIDs(n, first int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(first + n - i)
	}
	return ids
}

func TestMountsShape(t *testing.T) {
	s := &Snapshotter{root: "/var/lib/strata", options: []string{"index=off"}}
	tests := []struct {
		name string
		sn   storage.Snapshot
		want string
	}{
		{"active base", storage.Snapshot{ID: "1", Kind: snapshots.KindActive},
			"bind /var/lib/strata/snapshots/1/fs [rw rbind]"},
		{"view base", storage.Snapshot{ID: "1", Kind: snapshots.KindView},
			"bind /var/lib/strata/snapshots/1/fs [ro rbind]"},
		{"view of one layer", storage.Snapshot{ID: "3", Kind: snapshots.KindView, ParentIDs: []string{"2"}},
			"bind /var/lib/strata/snapshots/2/fs [ro rbind]"},
		{"active on two", storage.Snapshot{ID: "3", Kind: snapshots.KindActive, ParentIDs: []string{"2", "1"}},
			"overlay overlay [workdir=/var/lib/strata/snapshots/3/work upperdir=/var/lib/strata/snapshots/3/fs " +
				"lowerdir=/var/lib/strata/snapshots/2/fs:/var/lib/strata/snapshots/1/fs index=off]"},
		{"view of two", storage.Snapshot{ID: "3", Kind: snapshots.KindView, ParentIDs: []string{"2", "1"}},
			"overlay overlay [lowerdir=/var/lib/strata/snapshots/2/fs:/var/lib/strata/snapshots/1/fs index=off]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := s.mounts(tt.sn)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != 1 {
				t.Fatalf("%d mounts, want 1", len(ms))
			}
			got := ms[0].Type + " " + ms[0].Source + " [" + strings.Join(ms[0].Options, " ") + "]"
			if got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	if _, err := s.mounts(storage.Snapshot{ID: "1", Kind: snapshots.KindCommitted}); err == nil {
		t.Fatal("committed snapshot got mounts")
	}
}

func TestMountsRefusesWhatCannotFitOnePage(t *testing.T) {
	s := &Snapshotter{root: "/var/lib/strata/a/long/root/to/push/absolute/paths/over/the/page"}
	// 200 parents do not fit as absolute paths but do as relative ones.
	if _, err := s.mounts(storage.Snapshot{ID: "9999", Kind: snapshots.KindActive, ParentIDs: parentIDs(200, 1000)}); err != nil {
		t.Fatalf("200 parents: %v", err)
	}
	_, err := s.mounts(storage.Snapshot{ID: "9999", Kind: snapshots.KindActive, ParentIDs: parentIDs(600, 1000)})
	if !errors.Is(err, ErrTooManyLayers) {
		t.Fatalf("600 parents: %v, want ErrTooManyLayers", err)
	}
}
