// Package driver is Cistern's CSI driver: it serves the CSI services over gRPC.
//
// The controller turns dataset parameters into volumes (sub-directories
// of a dataset, named by volume IDs) and the node binds them out of the
// node's cache daemon; identity answers probes.
package driver

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/kube"
	"github.com/cistern-csi/cistern/pkg/mounter"
)

// Name is the CSI driver name.
const Name = "cistern.csi.dev"

// Topology: NodeGetInfo reports TopologyNode; CreateVolume returns
// TopologyCacheGroup for a dataset of a cache group, the node label that
// the PV's node affinity then requires (set by the administrator, never
// reported by a node plugin).
const (
	TopologyNode       = Name + "/node"
	TopologyCacheGroup = Name + "/cache-group"
)

// Driver serves the CSI services that Options.Mode selects.
//
// Lock order: a volume or path try-lock (volumeLocks, pathLocks) is taken
// first; a subtree lock (subtrees) is taken inside it, only around record
// reads and writes and the creation of a volume's directory, never around
// a mount, a tree walk or the removal of a directory.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	// immutable after New
	opts    Options
	mounter mounter.Interface
	cache   CacheClient // the node's cache daemon

	volumeLocks *keyLocks // CreateVolume by name, DeleteVolume and NodeStage/Unstage by volume ID
	pathLocks   *keyLocks // NodePublish/Unpublish by target path
	// singleWriters holds single-writer volumes to one target path.
	singleWriters *singleWriters

	subtrees *subtreeLocks  // orders record work on overlapping sub-paths (see subtreeLocks)
	staged   *stagedVolumes // what each volume was staged with, to stage it again (see restage)

	registration *registration // with the kubelet, when the node plugin registers itself (else nil)

	// kube reaches the API server (--records-namespace; else nil): the
	// records of read-only datasets, the PVs the delete guard checks.
	kube *kube.Client
	// groupNodes reports whether some node carries the label key=value
	// (d.kube's; nil outside a cluster: any node may serve a group).
	groupNodes func(ctx context.Context, key, value string) (bool, error)

	healthAddr atomic.Value // string: where /healthz is served, once listening
}

// CacheClient is the node service's view of the cache daemon: the daemon
// mounts each dataset once and the node binds volumes out of that mount.
type CacheClient interface {
	Mount(ctx context.Context, req api.MountRequest) (api.MountResponse, error)
	Release(ctx context.Context, holder string) error
	// Health is nil when the daemon serves every dataset it has mounted.
	Health(ctx context.Context) error
}

// New validates opts and returns a driver using m for mounts and cc to
// reach the cache daemon (nil: a client of opts.CacheSocket).
func New(opts Options, m mounter.Interface, cc CacheClient) (*Driver, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("driver: nil mounter")
	}
	if cc == nil {
		cc = api.NewClient(opts.CacheSocket)
	}
	d := &Driver{
		opts:          opts,
		mounter:       m,
		cache:         cc,
		volumeLocks:   newKeyLocks(),
		pathLocks:     newKeyLocks(),
		singleWriters: newSingleWriters(),
		subtrees:      newSubtreeLocks(),
		staged:        newStagedVolumes(),
	}
	if opts.RecordsNamespace != "" {
		c, err := kube.InCluster(kube.ServiceAccountDir)
		if err != nil {
			return nil, fmt.Errorf("--records-namespace needs the API server: %w", err)
		}
		d.kube, d.groupNodes = c, c.NodeLabelled
	}
	if opts.RegistrationDir != "" {
		endpoint := opts.KubeletEndpoint
		if endpoint == "" {
			endpoint, _ = SocketPath(opts.Endpoint) // checked by Validate
		}
		d.registration = &registration{endpoint: endpoint}
	}
	return d, nil
}

// HealthAddr returns the address /healthz is served on ("" until Run
// listens; useful with --health-address=127.0.0.1:0).
func (d *Driver) HealthAddr() string {
	a, _ := d.healthAddr.Load().(string)
	return a
}
