package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestInCluster: the in-cluster client trusts only the service account's
// CA, sends the token file's current content (rotated tokens), and says
// what is missing outside a cluster.
func TestInCluster(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		fmt.Fprint(w, `{"metadata":{"name":"c"},"data":{"k":"v"}}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.crt", string(ca))
	write("token", "first\n")
	write("namespace", "cistern-system\n")

	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InCluster(dir); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Fatalf("outside a cluster: %v, want an error naming KUBERNETES_SERVICE_HOST", err)
	}
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "https://"))
	t.Setenv("KUBERNETES_SERVICE_HOST", host)
	t.Setenv("KUBERNETES_SERVICE_PORT", port)
	c, err := InCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if cm, err := c.GetConfigMap(ctx, "ns", "c"); err != nil || cm.Data["k"] != "v" {
		t.Fatalf("GetConfigMap = %+v, %v", cm, err)
	}
	write("token", "second\n")
	if _, err := c.GetConfigMap(ctx, "ns", "c"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(seen) != 2 || seen[0] != "Bearer first" || seen[1] != "Bearer second" {
		t.Errorf("Authorization headers %q, want the token file's content at each call", seen)
	}
	mu.Unlock()
	if ns, err := Namespace(dir); err != nil || ns != "cistern-system" {
		t.Errorf("Namespace = %q, %v", ns, err)
	}

	// A CA that did not sign the server's certificate: refused.
	write("ca.crt", string(otherCA(t)))
	c, err = InCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetConfigMap(ctx, "ns", "c"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a server the CA did not sign: %v, want a certificate error", err)
	}
}

// otherCA returns a self-signed CA certificate (PEM) of a fresh key.
func otherCA(t *testing.T) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestConfigMapCalls: create-or-replace, delete of a missing object, the
// API's errors as Go errors, and a list that pages.
func TestConfigMapCalls(t *testing.T) {
	type call struct{ method, path string }
	var calls []call
	objects := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls = append(calls, call{r.Method, r.URL.Path})
		const base = "/api/v1/namespaces/ns/configmaps"
		name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, base), "/")
		body, _ := io.ReadAll(r.Body)
		status := func(code int, msg string) {
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"kind":"Status","message":%q}`, msg)
		}
		switch {
		case r.Method == http.MethodPut && objects[name] == "":
			status(404, "configmaps \""+name+"\" not found")
		case r.Method == http.MethodPut, r.Method == http.MethodPost:
			var cm ConfigMap
			if err := json.Unmarshal(body, &cm); err != nil || cm.Kind != "ConfigMap" || cm.APIVersion != "v1" {
				status(400, fmt.Sprintf("bad object %s: %v", body, err))
				return
			}
			objects[cm.Metadata.Name] = string(body)
			w.Write(body)
		case r.Method == http.MethodDelete && objects[name] == "":
			status(404, "not found")
		case r.Method == http.MethodDelete:
			delete(objects, name)
			fmt.Fprint(w, `{}`)
		case r.Method == http.MethodGet && name == "" && r.URL.Query().Get("continue") == "":
			if r.URL.Query().Get("labelSelector") != "a=b" || r.URL.Query().Get("limit") != "500" {
				status(400, "query "+r.URL.RawQuery)
				return
			}
			fmt.Fprint(w, `{"metadata":{"continue":"page2"},"items":[{"metadata":{"name":"one"}}]}`)
		case r.Method == http.MethodGet && name == "":
			fmt.Fprint(w, `{"metadata":{},"items":[{"metadata":{"name":"two"}}]}`)
		case r.Method == http.MethodGet && name == "forbidden":
			status(403, "configmaps is forbidden: User cannot get")
		default:
			status(404, "not found")
		}
	}))
	defer srv.Close()
	c := New(srv.URL, srv.Client(), func() (string, error) { return "t", nil })
	ctx := context.Background()

	cm := &ConfigMap{Metadata: ObjectMeta{Name: "rec", Namespace: "ns"}, Data: map[string]string{"k": "1"}}
	if err := c.ApplyConfigMap(ctx, cm); err != nil {
		t.Fatal(err)
	}
	cm.Data["k"] = "2"
	if err := c.ApplyConfigMap(ctx, cm); err != nil {
		t.Fatal(err)
	}
	want := []call{{"PUT", "/api/v1/namespaces/ns/configmaps/rec"}, {"POST", "/api/v1/namespaces/ns/configmaps"}, {"PUT", "/api/v1/namespaces/ns/configmaps/rec"}}
	if fmt.Sprint(calls) != fmt.Sprint(want) || !strings.Contains(objects["rec"], `"k":"2"`) {
		t.Errorf("calls %v, object %s; want create then replace", calls, objects["rec"])
	}
	if err := c.DeleteConfigMap(ctx, "ns", "rec"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteConfigMap(ctx, "ns", "rec"); err != nil {
		t.Errorf("deleting a ConfigMap already gone: %v", err)
	}
	if _, err := c.GetConfigMap(ctx, "ns", "rec"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of a missing ConfigMap: %v, want fs.ErrNotExist", err)
	}
	_, err := c.GetConfigMap(ctx, "ns", "forbidden")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 403 || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("a refusal: %v, want a StatusError 403 with the server's message", err)
	}
	list, err := c.ListConfigMaps(ctx, "ns", "a=b")
	if err != nil || len(list) != 2 || list[0].Metadata.Name != "one" || list[1].Metadata.Name != "two" {
		t.Errorf("ListConfigMaps = %+v, %v; want both pages", list, err)
	}
}

// TestListCSIVolumes: only the PVs of the driver, with handle and
// attributes.
func TestListCSIVolumes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"metadata":{},"items":[
			{"metadata":{"name":"a"},"spec":{"csi":{"driver":"cistern.csi.dev","volumeHandle":"h1","volumeAttributes":{"subPath":"x"}}}},
			{"metadata":{"name":"b"},"spec":{"csi":{"driver":"other.csi","volumeHandle":"h2"}}},
			{"metadata":{"name":"c"},"spec":{"hostPath":{"path":"/tmp"}}}]}`)
	}))
	defer srv.Close()
	c := New(srv.URL, srv.Client(), func() (string, error) { return "t", nil })
	pvs, err := c.ListCSIVolumes(context.Background(), "cistern.csi.dev")
	if err != nil || len(pvs) != 1 || pvs[0].Name != "a" || pvs[0].Handle != "h1" || pvs[0].Attributes["subPath"] != "x" {
		t.Errorf("ListCSIVolumes = %+v, %v; want PV a only", pvs, err)
	}
}

// TestNodeLabelled: one node of the label is enough, asked with the label
// as the selector; no node, and the API's refusal, are told apart.
func TestNodeLabelled(t *testing.T) {
	var selector, limit string
	items := `[{"metadata":{"name":"n1"}}]`
	code := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes" {
			http.NotFound(w, r)
			return
		}
		selector, limit = r.URL.Query().Get("labelSelector"), r.URL.Query().Get("limit")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"metadata":{},"items":%s}`, items)
	}))
	defer srv.Close()
	c := New(srv.URL, srv.Client(), func() (string, error) { return "t", nil })
	ok, err := c.NodeLabelled(context.Background(), "cistern.csi.dev/cache-group", "research")
	if err != nil || !ok || selector != "cistern.csi.dev/cache-group=research" || limit != "1" {
		t.Errorf("NodeLabelled = %t, %v (selector %q, limit %q); want true, the label as the selector, one item", ok, err, selector, limit)
	}
	items = `[]`
	if ok, err := c.NodeLabelled(context.Background(), "cistern.csi.dev/cache-group", "research"); err != nil || ok {
		t.Errorf("no node: NodeLabelled = %t, %v; want false, nil", ok, err)
	}
	code = http.StatusForbidden
	if _, err := c.NodeLabelled(context.Background(), "cistern.csi.dev/cache-group", "research"); err == nil {
		t.Errorf("a refused list: no error")
	}
}
