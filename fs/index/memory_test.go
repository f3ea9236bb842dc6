package index

import (
	"reflect"
	"testing"
)

// TestMemoryViewMatchesStored: the in-memory view a first mount serves
// from answers exactly as the stored view that replaces it.
func TestMemoryViewMatchesStored(t *testing.T) {
	idx := dbTestIndex()
	db := testDB(t)
	if err := Save(db, "k", idx, 100); err != nil {
		t.Fatal(err)
	}
	disk, err := Open(db, "k")
	if err != nil {
		t.Fatal(err)
	}
	mem := NewMemory(idx, 100)
	memInfo, diskInfo := mem.Info(), disk.Info()
	memInfo.Created = diskInfo.Created // only a stored index records when it was made
	if !reflect.DeepEqual(memInfo, diskInfo) {
		t.Fatalf("info: memory %+v, disk %+v", memInfo, diskInfo)
	}
	for ino := uint64(0); ino <= 5; ino++ {
		me, merr := mem.Entry(ino)
		de, derr := disk.Entry(ino)
		if (merr == nil) != (derr == nil) || (merr == nil && !reflect.DeepEqual(me, de)) {
			t.Errorf("Entry(%d): memory %+v %v, disk %+v %v", ino, me, merr, de, derr)
		}
		mk, _ := mem.ReadDir(ino)
		dk, _ := disk.ReadDir(ino)
		if len(mk) != len(dk) || (len(mk) > 0 && !reflect.DeepEqual(mk, dk)) {
			t.Errorf("ReadDir(%d): memory %v, disk %v", ino, mk, dk)
		}
		for _, name := range []string{"a", "b", "dir", "gone", "zzz"} {
			me, mf, _ := mem.Lookup(ino, name)
			de, df, _ := disk.Lookup(ino, name)
			if mf != df || (mf && !reflect.DeepEqual(me, de)) {
				t.Errorf("Lookup(%d, %q): memory %v %v, disk %v %v", ino, name, me, mf, de, df)
			}
		}
		for _, r := range [][2]int64{{0, 1}, {3, 2}, {5, 100}, {10, 5}} {
			mc, _ := mem.Chunks(ino, r[0], r[1])
			dc, _ := disk.Chunks(ino, r[0], r[1])
			if len(mc) != len(dc) || (len(mc) > 0 && !reflect.DeepEqual(mc, dc)) {
				t.Errorf("Chunks(%d, %v): memory %v, disk %v", ino, r, mc, dc)
			}
		}
	}
	for _, r := range [][2]int64{{0, 100}, {1, 30}, {30, 31}, {31, 100}} {
		mc, _ := mem.ChunksInBlob(r[0], r[1], 10)
		dc, _ := disk.ChunksInBlob(r[0], r[1], 10)
		if len(mc) != len(dc) || (len(mc) > 0 && !reflect.DeepEqual(mc, dc)) {
			t.Errorf("ChunksInBlob(%v): memory %v, disk %v", r, mc, dc)
		}
	}
}
