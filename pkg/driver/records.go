package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

// volumeRecord is what the controller remembers of a volume it created. It is
// stored in the dataset (.cistern/volumes/<nameHash>.json) so the controller
// stays stateless and the record travels with the data.
type volumeRecord struct {
	Name          string    `json:"name"`
	VolumeID      string    `json:"volumeID"`
	SubPath       string    `json:"subPath"`
	Fingerprint   string    `json:"fingerprint"`
	CapacityBytes int64     `json:"capacityBytes"`
	Created       time.Time `json:"created"`
	// Deleting marks a volume whose directory is being removed or
	// archived: no volume that overlaps it is created meanwhile.
	Deleting bool `json:"deleting,omitempty"`
}

// records stores volumeRecords by name hash.
type records interface {
	Get(ctx context.Context, hash string) (*volumeRecord, error) // fs.ErrNotExist when absent
	Put(ctx context.Context, hash string, r *volumeRecord) error
	Delete(ctx context.Context, hash string) error
	List(ctx context.Context) ([]*volumeRecord, error)
}

// records returns where the volume records of a dataset live: inside a
// read-write dataset (they travel with the data); for a read-only one (the
// controller never writes into it) in ConfigMaps in a cluster, else in the
// controller's state directory.
func (d *Driver) records(src api.Source, readOnly bool, ds dataset) records {
	if readOnly && d.kube != nil {
		return kubeRecords{c: d.kube, ns: d.opts.RecordsNamespace, source: src.String()}
	}
	if readOnly {
		return ctxRecords{recordStore{dir: filepath.Join(d.opts.StateDir, "records", NameHash(src.String()))}}
	}
	return ds.Records()
}

// volumeStore opens a volume's dataset and its records store.
func (d *Driver) volumeStore(id VolumeID, secrets map[string]string) (dataset, records, error) {
	ds, err := d.openDataset(id.Source, secrets)
	if err != nil {
		return nil, nil, err
	}
	return ds, d.records(id.Source, id.ReadOnly, ds), nil
}

// recordEntry is one entry of a records directory, as listRecords reads it.
type recordEntry struct {
	name string
	dir  bool
}

// listRecords reads the records among the entries of a records directory:
// every <hash>.json that is neither a directory nor a dot file (a temporary
// file). A record deleted meanwhile is skipped.
func listRecords(ents []recordEntry, get func(hash string) (*volumeRecord, error)) ([]*volumeRecord, error) {
	var out []*volumeRecord
	for _, e := range ents {
		hash, ok := strings.CutSuffix(e.name, ".json")
		if !ok || e.dir || strings.HasPrefix(e.name, ".") {
			continue
		}
		r, err := get(hash)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// recordStore keeps volume records as JSON files in one directory.
type recordStore struct {
	dir string
}

func (s recordStore) file(hash string) string { return filepath.Join(s.dir, hash+".json") }

// Get returns the record, or fs.ErrNotExist.
func (s recordStore) Get(hash string) (*volumeRecord, error) {
	b, err := os.ReadFile(s.file(hash))
	if err != nil {
		return nil, err
	}
	var r volumeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("volume record %s: %w", s.file(hash), err)
	}
	return &r, nil
}

// Put writes the record atomically (temp file, fsync, rename).
func (s recordStore) Put(hash string, r *volumeRecord) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-"+hash+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.file(hash))
}

// Delete removes the record; a missing record is not an error.
func (s recordStore) Delete(hash string) error {
	err := os.Remove(s.file(hash))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// List returns every record in the store.
func (s recordStore) List() ([]*volumeRecord, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]recordEntry, len(ents))
	for i, e := range ents {
		names[i] = recordEntry{name: e.Name(), dir: e.IsDir()}
	}
	return listRecords(names, s.Get)
}

// ctxRecords adapts a recordStore (local files) to records.
type ctxRecords struct{ s recordStore }

func (r ctxRecords) Get(_ context.Context, hash string) (*volumeRecord, error) { return r.s.Get(hash) }
func (r ctxRecords) Put(_ context.Context, hash string, v *volumeRecord) error {
	return r.s.Put(hash, v)
}
func (r ctxRecords) Delete(_ context.Context, hash string) error { return r.s.Delete(hash) }
func (r ctxRecords) List(context.Context) ([]*volumeRecord, error) {
	return r.s.List()
}

// s3Records keeps volume records as objects .cistern/volumes/<hash>.json
// in the dataset, so the controller stays stateless.
type s3Records struct{ c *s3store.Client }

const recordsDir = ReservedDir + "/volumes"

func (r s3Records) Get(ctx context.Context, hash string) (*volumeRecord, error) {
	b, err := r.c.Get(ctx, recordsDir+"/"+hash+".json")
	if errors.Is(err, syscall.ENOENT) {
		return nil, fmt.Errorf("volume record %s: %w", hash, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	var v volumeRecord
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("volume record %s: %w", hash, err)
	}
	return &v, nil
}

func (r s3Records) Put(ctx context.Context, hash string, v *volumeRecord) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = r.c.Put(ctx, recordsDir+"/"+hash+".json", strings.NewReader(string(b)), int64(len(b)))
	return err
}

func (r s3Records) Delete(ctx context.Context, hash string) error {
	return r.c.Remove(ctx, recordsDir+"/"+hash+".json")
}

func (r s3Records) List(ctx context.Context) ([]*volumeRecord, error) {
	objs, err := r.c.List(ctx, recordsDir)
	if err != nil {
		return nil, err
	}
	names := make([]recordEntry, len(objs))
	for i, o := range objs {
		names[i] = recordEntry{name: o.Name, dir: o.Dir}
	}
	return listRecords(names, func(hash string) (*volumeRecord, error) { return r.Get(ctx, hash) })
}
