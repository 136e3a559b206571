package kube

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
)

// TestListEndpoints reads a Service's EndpointSlices as the API server
// sends them: the named port, node and pod names, unset conditions as
// true, endpoints without an address skipped, slices paged.
func TestListEndpoints(t *testing.T) {
	pages := []string{
		`{"metadata":{"continue":"p2"},"items":[{"addressType":"IPv4","ports":[{"name":"metrics","port":9808,"protocol":"TCP"},{"name":"group","port":7480,"protocol":"TCP"}],
		  "endpoints":[
		    {"addresses":["10.0.0.1"],"conditions":{"ready":true,"serving":true,"terminating":false},"nodeName":"node-a","targetRef":{"kind":"Pod","name":"cistern-node-x1","namespace":"kube-system"}},
		    {"addresses":["10.0.0.2"],"conditions":{"ready":false,"serving":true,"terminating":true},"nodeName":"node-b","targetRef":{"kind":"Pod","name":"cistern-node-x2"}},
		    {"addresses":[],"conditions":{}}]}]}`,
		`{"metadata":{},"items":[{"addressType":"IPv4","ports":[{"name":"group","port":7481}],"endpoints":[{"addresses":["10.0.0.3"],"conditions":{}}]},
		  {"addressType":"IPv4","ports":[{"name":"other","port":1}],"endpoints":[{"addresses":["10.0.0.9"],"conditions":{}}]}]}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices" || r.URL.Query().Get("labelSelector") != "kubernetes.io/service-name=cistern-cache-group" {
			http.Error(w, "unexpected "+r.URL.String(), http.StatusNotFound)
			return
		}
		if r.URL.Query().Get("continue") == "p2" {
			fmt.Fprint(w, pages[1])
			return
		}
		fmt.Fprint(w, pages[0])
	}))
	defer srv.Close()
	c := New(srv.URL, srv.Client(), func() (string, error) { return "t", nil })
	got, err := c.ListEndpoints(context.Background(), "kube-system", "cistern-cache-group", "group")
	if err != nil {
		t.Fatal(err)
	}
	want := []Endpoint{
		{Address: "10.0.0.1", Port: 7480, NodeName: "node-a", Pod: "cistern-node-x1", Ready: true, Serving: true},
		{Address: "10.0.0.2", Port: 7480, NodeName: "node-b", Pod: "cistern-node-x2", Serving: true, Terminating: true},
		{Address: "10.0.0.3", Port: 7481, Ready: true, Serving: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("endpoints:\n got %+v\nwant %+v", got, want)
	}
}
