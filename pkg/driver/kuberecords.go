package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/kube"
)

// In a cluster (--records-namespace), the records of read-only datasets
// are ConfigMaps in the controller's namespace, one per volume, so every
// controller replica sees them and they outlive the controller's pod; and
// DeleteVolume also asks the API server which PersistentVolumes of the
// driver exist, so a static PV, or a volume of another dataset whose
// directory lies in this one's tree, keeps its data too.

const (
	// labelSource marks a record's ConfigMap with its dataset's source
	// (hashed: a label value is at most 63 characters).
	labelSource    = "cistern.csi.dev/source"
	labelManagedBy = "app.kubernetes.io/managed-by"
	recordKey      = "record"
	sourceKey      = "source"
)

// kubeRecords keeps the volume records of one dataset in ConfigMaps.
type kubeRecords struct {
	c      *kube.Client
	ns     string
	source string // the dataset's canonical source
}

func (r kubeRecords) name(hash string) string {
	return "cistern-volume-" + NameHash(r.source) + "-" + hash
}

func (r kubeRecords) decode(cm *kube.ConfigMap) (*volumeRecord, error) {
	var v volumeRecord
	if err := json.Unmarshal([]byte(cm.Data[recordKey]), &v); err != nil {
		return nil, fmt.Errorf("volume record %s/%s: %w", r.ns, cm.Metadata.Name, err)
	}
	return &v, nil
}

func (r kubeRecords) Get(ctx context.Context, hash string) (*volumeRecord, error) {
	cm, err := r.c.GetConfigMap(ctx, r.ns, r.name(hash))
	if err != nil {
		return nil, fmt.Errorf("volume record %s: %w", hash, err)
	}
	if cm.Data[sourceKey] != r.source {
		return nil, fmt.Errorf("volume record %s: %w", hash, fs.ErrNotExist)
	}
	return r.decode(cm)
}

func (r kubeRecords) Put(ctx context.Context, hash string, v *volumeRecord) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.c.ApplyConfigMap(ctx, &kube.ConfigMap{
		Metadata: kube.ObjectMeta{
			Name:      r.name(hash),
			Namespace: r.ns,
			Labels:    map[string]string{labelSource: NameHash(r.source), labelManagedBy: "cistern-csi"},
		},
		Data: map[string]string{sourceKey: r.source, recordKey: string(b)},
	})
}

func (r kubeRecords) Delete(ctx context.Context, hash string) error {
	return r.c.DeleteConfigMap(ctx, r.ns, r.name(hash))
}

func (r kubeRecords) List(ctx context.Context) ([]*volumeRecord, error) {
	cms, err := r.c.ListConfigMaps(ctx, r.ns, labelSource+"="+NameHash(r.source))
	if err != nil {
		return nil, err
	}
	var out []*volumeRecord
	for i := range cms {
		if cms[i].Data[sourceKey] != r.source {
			continue // another source of the same hash prefix
		}
		v, err := r.decode(&cms[i])
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// place is where a volume's data lives: a store (the node's file system,
// or a bucket of an endpoint) and a slash path in it ("" is its root), so
// that volumes of different datasets compare too.
func place(src api.Source, sub string) (store, p string) {
	if src.IsS3() {
		return "s3 " + src.S3.Endpoint + " " + src.S3.Bucket, strings.Trim(path.Join(src.S3.Prefix, sub), "/")
	}
	return "file", strings.Trim(path.Join(src.Path, sub), "/")
}

// volumeSharers returns the PersistentVolumes of this driver, other than the
// volume rawID, whose data lies in id's sub-directory, is it, or holds it.
// A PV whose handle and attributes say nothing Cistern can read is skipped:
// the node refuses to stage it, so it shows no data.
func (d *Driver) volumeSharers(ctx context.Context, id VolumeID, rawID string) ([]string, error) {
	pvs, err := d.kube.ListCSIVolumes(ctx, Name)
	if err != nil {
		return nil, err
	}
	store, at := place(id.Source, id.SubPath)
	var out []string
	for _, pv := range pvs {
		if pv.Handle == rawID {
			continue
		}
		var src api.Source
		var sub string
		if other, err := ParseVolumeID(pv.Handle); err == nil {
			src, sub = other.Source, other.SubPath
		} else if p, err := staticParams(pv.Handle, pv.Attributes); err == nil {
			src, sub = p.Source, p.SubPath
		} else {
			continue
		}
		if s, p := place(src, sub); s == store && overlaps(p, at) {
			out = append(out, "pv/"+pv.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// kubeStatus is the gRPC status of a failed API call: Unavailable, so the
// sidecar retries; a refusal names what to check.
func kubeStatus(op string, err error) error {
	var se *kube.StatusError
	if errors.As(err, &se) && (se.Code == 401 || se.Code == 403) {
		return status.Errorf(codes.Unavailable, "%s: %v (check the controller's service account and its roles)", op, err)
	}
	return status.Errorf(codes.Unavailable, "%s: %v", op, err)
}
