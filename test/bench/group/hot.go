package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/cistern-csi/cistern/pkg/cache/group"
)

// hotFile measures the replicas of hot blocks: 4 members own the blocks
// of a file that 10 short-lived client-only nodes read one after another
// (each block asked of its owner 10 times: hot from the DefaultHotAsks-th
// ask), then the 4 members (each block's replica keeps a copy as its
// owner's answer says the block is hot). Then a member dies and a fresh
// node reads the file: the dead member's blocks come from their replicas,
// not the source (without replicas, from the source: the next in the
// ranking does not hold them).
func hotFile(dir string, src *countingSource, key string, block int64) error {
	const nOwners, nClients = 4, 10
	ms, stop, err := startMembers(nOwners+nClients+1, nOwners, filepath.Join(dir, "hot"), src, key, 1<<40, block)
	if err != nil {
		return err
	}
	defer stop()
	name := "hot/weights"
	nBlocks := int64(16)
	if err := writeFile(filepath.Join(dir, "source", name), nBlocks*block, 99); err != nil {
		return err
	}
	for _, m := range slices.Concat(ms[nOwners:nOwners+nClients], ms[:nOwners]) {
		if err := readFile(m.ds, src, name); err != nil {
			return fmt.Errorf("%s: %w", m.id, err)
		}
	}
	// The blocks node-0 owns.
	a, err := src.Stat(context.Background(), name)
	if err != nil {
		return err
	}
	ring, err := group.NewRing(members(nOwners, equal))
	if err != nil {
		return err
	}
	lost := 0
	for b := range nBlocks {
		if o, _ := ring.Owner(group.Block{Dataset: key, Object: a.Fingerprint(), Index: b}); o.ID == ms[0].id {
			lost++
		}
	}
	ms[0].hs.Close() // node-0 dies
	before := src.reads.Load()
	if err := readFile(ms[nOwners+nClients].ds, src, name); err != nil {
		return fmt.Errorf("the fresh node: %w", err)
	}
	again := src.reads.Load() - before
	line(fmt.Sprintf("hot blocks (%d nodes read a file of %d blocks; hot at %d asks), their owner gone: source re-fetches as a fresh node reads it",
		nOwners+nClients, nBlocks, group.DefaultHotAsks), fmt.Sprintf("%d of the dead member's %d blocks", again, lost), "0", again == 0 && lost > 0)
	return nil
}
