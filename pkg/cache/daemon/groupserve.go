package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// A cache-only member (--group-datasets) serves datasets to its group
// without volumes of its own: a StatefulSet or Deployment of daemons that
// adds capacity and throughput to a node pool's group, scaled by hand, an
// HPA or a schedule. Each dataset it serves is a file DIR/<dataset>.json:
//
//	{"parameters": {"source": "s3://bucket/prefix", "endpoint": "...", "region": "..."},
//	 "secretsDir": "/etc/cistern/group-secrets/<dataset>"}
//
// parameters are the dataset's source parameters as its StorageClass has
// them (source and the S3 connection options); secretsDir holds its
// credentials as a mounted Secret does (a file per key). They must be the
// volumes' own: the dataset's key in the group is derived from the
// source and the credentials, and a member serves only what it can fetch
// itself. Nothing is mounted: no FUSE, no privileges.

// groupDataset is one file of --group-datasets.
type groupDataset struct {
	Parameters map[string]string `json:"parameters"`
	SecretsDir string            `json:"secretsDir,omitempty"`
}

// sourceParams are the parameters a served dataset may have.
var sourceParams = []string{"source", api.OptEndpoint, api.OptRegion, api.OptAddressing, api.OptAnonymous}

// readGroupDatasets reads the datasets of dir as mount requests of the
// group's, with their credentials.
func readGroupDatasets(dir, groupName string) ([]api.MountRequest, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("--group-datasets %s: no <dataset>.json files", dir)
	}
	sort.Strings(files)
	var out []api.MountRequest
	for _, f := range files {
		req, err := readGroupDataset(f, groupName)
		if err != nil {
			return nil, fmt.Errorf("--group-datasets: %s: %w", f, err)
		}
		out = append(out, req)
	}
	return out, nil
}

func readGroupDataset(file, groupName string) (api.MountRequest, error) {
	name := strings.TrimSuffix(filepath.Base(file), ".json")
	if !dnsLabel.MatchString(name) {
		return api.MountRequest{}, fmt.Errorf("the dataset's name %q (the file's) must be a DNS label", name)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return api.MountRequest{}, err
	}
	var spec groupDataset
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return api.MountRequest{}, fmt.Errorf("want {\"parameters\": {...}, \"secretsDir\": DIR}: %w", err)
	}
	for k := range spec.Parameters {
		if !slices.Contains(sourceParams, k) {
			return api.MountRequest{}, fmt.Errorf("parameter %q: a cache-only member takes only %s", k, strings.Join(sourceParams, ", "))
		}
	}
	raw := spec.Parameters["source"]
	if strings.Contains(raw, "?") {
		return api.MountRequest{}, fmt.Errorf("parameter source %q must not have a query: S3 connection options are parameters of their own", raw)
	}
	src, err := api.ParseSource(raw)
	if err != nil {
		return api.MountRequest{}, fmt.Errorf("parameter %w", err)
	}
	if err := src.ApplyOptions(spec.Parameters); err != nil {
		return api.MountRequest{}, err
	}
	req := api.MountRequest{Holder: "group:" + name, Dataset: name, Source: src.String(), ReadOnly: true,
		MetaCache: time.Hour, CacheGroup: groupName}
	if spec.SecretsDir != "" {
		if req.Secrets, err = readSecretsDir(spec.SecretsDir); err != nil {
			return api.MountRequest{}, err
		}
	}
	return req, req.Validate()
}

// readSecretsDir reads a mounted Secret: a file per key (the kubelet's
// ..data links and directories are skipped).
func readSecretsDir(dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("secretsDir: %w", err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := os.Stat(p) // the key's link, followed
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("secretsDir: %w", err)
		}
		out[e.Name()] = string(b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("secretsDir %s: no keys", dir)
	}
	return out, nil
}

// serveGroupDatasets serves the datasets of --group-datasets to the group
// (their sources opened and checked now: a member that cannot fetch them
// does not start).
func (d *Daemon) serveGroupDatasets() error {
	if d.opts.GroupDatasets == "" {
		return nil
	}
	reqs, err := readGroupDatasets(d.opts.GroupDatasets, d.opts.Group)
	if err != nil {
		return err
	}
	for _, req := range reqs {
		key := req.Key(d.salt)
		secrets := req.Secrets
		req.Secrets = nil
		log := d.log.WithValues("dataset", req.Dataset, "key", key)
		src, err := d.openSource(d.ctx, req, secrets, true, log)
		if err != nil {
			return fmt.Errorf("--group-datasets: dataset %s: %w", req.Dataset, err)
		}
		m := &mounted{key: key, req: req, secrets: secrets, log: log, ds: d.cache.Dataset(key, src)}
		d.joinGroup(m)
		log.Info("Serving the dataset to the cache group (cache-only)", "source", req.Source)
	}
	return nil
}

// drainIdle is how long a draining member waits for a peer's request
// before it stops: longer than the members take to see it leave
// (membersEvery) and then ask it for what it held.
var drainIdle = 5 * time.Second

// drainGroup keeps the peer server answering for up to --group-drain while
// the other members take this one's blocks over: its endpoint is
// terminating, they place its blocks elsewhere and, for the hand-off,
// ask it for them before the store (a cache-only member scaled down
// would otherwise take its share with it). It ends once no peer has
// asked for drainIdle and no answer is being made.
func (d *Daemon) drainGroup() {
	if d.opts.GroupDrain <= 0 {
		return
	}
	start := time.Now()
	end := start.Add(d.opts.GroupDrain)
	d.group.log.Info("Draining: answering peers while they take this member's blocks over", "atMost", d.opts.GroupDrain)
	for time.Now().Before(end) {
		if time.Since(start) >= drainIdle && d.group.server.Idle(drainIdle) {
			break
		}
		time.Sleep(min(100*time.Millisecond, time.Until(end)))
	}
	d.group.log.Info("Drained", "took", time.Since(start).Round(time.Millisecond), "blocksServed", d.group.server.Blocks.Load())
}
