package cache

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// itemMeta is an item's persisted index.
type itemMeta struct {
	Dataset     string   `json:"dataset"`
	ID          string   `json:"id,omitempty"` // itemID ("" for an index of an older version: the name)
	Name        string   `json:"name"`
	Fingerprint string   `json:"fingerprint"`
	Size        int64    `json:"size"`
	BlockSize   int64    `json:"blockSize"`
	Present     []bool   `json:"present"`
	Sums        []uint32 `json:"sums"`
	Atime       int64    `json:"atime"`
}

// save writes the index (temp file and rename). A crash loses at most
// blocks fetched since the last save; a block marked present whose data did
// not reach the disk fails its checksum and is fetched again.
func (it *Item) save() error {
	it.saveMu.Lock()
	defer it.saveMu.Unlock()
	it.mu.Lock()
	if it.removed {
		it.mu.Unlock()
		return nil
	}
	gen := it.gen
	_, metaPath := it.pathsLocked()
	it.unsaved = 0
	m := itemMeta{Dataset: it.dataset, ID: it.id, Name: it.name, Fingerprint: it.fingerprint, Size: it.size,
		BlockSize: it.env.blockSize, Present: append([]bool(nil), it.present...), Sums: append([]uint32(nil), it.sums...), Atime: it.atime.Load()}
	it.mu.Unlock()
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := metaPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	it.mu.Lock()
	current := gen == it.gen && !it.removed
	it.mu.Unlock()
	if !current {
		// Reset or removed meanwhile: this index describes files that
		// are gone.
		return os.Remove(tmp)
	}
	it.env.total.indexWrites.Add(1)
	return os.Rename(tmp, metaPath)
}

// readIndex reads the index at metaPath.
func readIndex(metaPath string) (itemMeta, error) {
	var m itemMeta
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return m, err
	}
	err = json.Unmarshal(b, &m)
	return m, err
}

// loadIndex adopts the index m read from metaPath, for a new item that
// no one else holds yet. Its blocks are present but not verified: each is
// checked on its first read.
func (it *Item) loadIndex(m itemMeta, metaPath string) error {
	bs := it.env.blockSize
	nb := (m.Size + bs - 1) / bs
	if m.BlockSize != bs || int64(len(m.Present)) != nb || len(m.Sums) != len(m.Present) {
		return fmt.Errorf("index does not match block size %d", bs)
	}
	// The generation the files were written under (an index of an
	// older version, <hash>.meta, keeps its names too).
	base := strings.TrimSuffix(filepath.Base(metaPath), ".meta")
	gen := uint64(0)
	if base != it.hash {
		hex, ok := strings.CutPrefix(base, it.hash+"-")
		g, err := strconv.ParseUint(hex, 16, 64)
		if !ok || err != nil || len(hex) != 16 || g == 0 {
			return fmt.Errorf("index at %s names another file", metaPath)
		}
		gen = g
	}
	if filepath.Dir(metaPath) != filepath.Join(it.tier.Dir, it.hash[:2]) {
		return fmt.Errorf("index at %s names another file", metaPath)
	}
	it.fileGen = gen
	it.fingerprint, it.size, it.gen = m.Fingerprint, m.Size, 1
	it.present, it.sums, it.verified = m.Present, m.Sums, make([]bool, nb)
	for bl, p := range m.Present {
		if p {
			it.presentCount++
			it.addBytesLocked(min(bs, m.Size-int64(bl)*bs))
		}
	}
	it.atime.Store(m.Atime)
	if m.Atime == 0 {
		it.atime.Store(time.Now().UnixNano())
	}
	return nil
}
