package kube

import (
	"context"
	"encoding/json"
	"net/url"
)

// Endpoint is one address of a Service, from its EndpointSlices.
type Endpoint struct {
	// Address is its first address (an IP).
	Address string
	// Port is the number of the slice's port of the asked name.
	Port int
	// NodeName is the node it runs on ("" if the slice does not say).
	NodeName string
	// Pod is the name of the pod behind it ("" for another kind).
	Pod string
	// Ready, Serving and Terminating are its conditions; an unset
	// ready or serving condition counts as true, as the API documents.
	Ready, Serving, Terminating bool
}

// ListEndpoints returns the endpoints of Service service in namespace ns
// that have a port named port, from the Service's EndpointSlices
// (discovery.k8s.io/v1).
func (c *Client) ListEndpoints(ctx context.Context, ns, service, port string) ([]Endpoint, error) {
	var out []Endpoint
	path := "/apis/discovery.k8s.io/v1/namespaces/" + url.PathEscape(ns) + "/endpointslices"
	q := url.Values{"labelSelector": {"kubernetes.io/service-name=" + service}}
	err := c.list(ctx, path, q, func(raw json.RawMessage) error {
		var page []endpointSlice
		if err := json.Unmarshal(raw, &page); err != nil {
			return err
		}
		for _, s := range page {
			out = append(out, s.endpoints(port)...)
		}
		return nil
	})
	return out, err
}

type endpointSlice struct {
	Ports []struct {
		Name *string `json:"name"`
		Port *int    `json:"port"`
	} `json:"ports"`
	Endpoints []struct {
		Addresses  []string `json:"addresses"`
		NodeName   *string  `json:"nodeName"`
		Conditions struct {
			Ready       *bool `json:"ready"`
			Serving     *bool `json:"serving"`
			Terminating *bool `json:"terminating"`
		} `json:"conditions"`
		TargetRef *struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"targetRef"`
	} `json:"endpoints"`
}

// endpoints returns the slice's endpoints on its port named name.
func (s endpointSlice) endpoints(name string) []Endpoint {
	port := 0
	for _, p := range s.Ports {
		if p.Port != nil && (p.Name != nil && *p.Name == name || p.Name == nil && name == "") {
			port = *p.Port
		}
	}
	if port == 0 {
		return nil
	}
	var out []Endpoint
	for _, e := range s.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		ep := Endpoint{Address: e.Addresses[0], Port: port,
			Ready: orTrue(e.Conditions.Ready), Serving: orTrue(e.Conditions.Serving), Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating}
		if e.NodeName != nil {
			ep.NodeName = *e.NodeName
		}
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
			ep.Pod = e.TargetRef.Name
		}
		out = append(out, ep)
	}
	return out
}

func orTrue(b *bool) bool { return b == nil || *b }
