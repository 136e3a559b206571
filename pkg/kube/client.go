// Package kube is the small part of the Kubernetes API the controller uses:
// ConfigMaps in one namespace, the CSI PersistentVolumes of the cluster and
// whether a node carries a label, over HTTPS with the pod's service
// account. It is a few REST calls, so the controller does not link
// client-go.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// ServiceAccountDir is where a pod finds its service account's token, CA
// and namespace.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// ErrConflict is an API answer 409: the object exists already, or changed
// since it was read.
var ErrConflict = errors.New("conflict")

// StatusError is an API answer other than success, with the API server's
// message.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("API server answered %d: %s", e.Code, e.Message)
}

// Is lets errors.Is match 404 with fs.ErrNotExist and 409 with ErrConflict.
func (e *StatusError) Is(target error) bool {
	return (target == fs.ErrNotExist && e.Code == http.StatusNotFound) ||
		(target == ErrConflict && e.Code == http.StatusConflict)
}

// Client calls one API server.
type Client struct {
	base  string // https://host:port
	http  *http.Client
	token func() (string, error)
}

// New returns a client of the API server at base that authenticates with
// the bearer token token returns (read at each call: bound service account
// tokens are rotated).
func New(base string, hc *http.Client, token func() (string, error)) *Client {
	return &Client{base: strings.TrimSuffix(base, "/"), http: hc, token: token}
}

// InCluster returns a client of the cluster the process runs in, from
// KUBERNETES_SERVICE_HOST/PORT and the service account in dir.
func InCluster(dir string) (*Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
	}
	ca, err := os.ReadFile(dir + "/ca.crt")
	if err != nil {
		return nil, fmt.Errorf("the service account's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("the service account's CA %s/ca.crt holds no certificate", dir)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
	tokenFile := dir + "/token"
	token := func() (string, error) {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("the service account's token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if _, err := token(); err != nil {
		return nil, err
	}
	return New("https://"+net.JoinHostPort(host, port), &http.Client{Transport: tr, Timeout: 30 * time.Second}, token), nil
}

// Namespace is the namespace of the pod's service account.
func Namespace(dir string) (string, error) {
	b, err := os.ReadFile(dir + "/namespace")
	if err != nil {
		return "", fmt.Errorf("the service account's namespace: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// do sends one request; a JSON body is marshalled from in, an answer
// unmarshalled into out (either may be nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	tok, err := c.token()
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var st struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &st) != nil || st.Message == "" {
			st.Message = strings.TrimSpace(string(b))
		}
		return &StatusError{Code: resp.StatusCode, Message: fmt.Sprintf("%s %s: %s", method, path, st.Message)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// ObjectMeta is the part of an object's metadata Cistern reads and writes.
type ObjectMeta struct {
	Name            string            `json:"name"`
	Namespace       string            `json:"namespace,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	ResourceVersion string            `json:"resourceVersion,omitempty"`
}

// ConfigMap is a core/v1 ConfigMap.
type ConfigMap struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   ObjectMeta        `json:"metadata"`
	Data       map[string]string `json:"data,omitempty"`
}

func configMapsPath(ns string) string {
	return "/api/v1/namespaces/" + url.PathEscape(ns) + "/configmaps"
}

// GetConfigMap returns the ConfigMap; an error matching fs.ErrNotExist when
// there is none.
func (c *Client) GetConfigMap(ctx context.Context, ns, name string) (*ConfigMap, error) {
	var cm ConfigMap
	if err := c.do(ctx, http.MethodGet, configMapsPath(ns)+"/"+url.PathEscape(name), nil, &cm); err != nil {
		return nil, err
	}
	return &cm, nil
}

// ApplyConfigMap creates the ConfigMap or replaces the one of that name.
func (c *Client) ApplyConfigMap(ctx context.Context, cm *ConfigMap) error {
	cm.APIVersion, cm.Kind = "v1", "ConfigMap"
	ns := cm.Metadata.Namespace
	err := c.do(ctx, http.MethodPut, configMapsPath(ns)+"/"+url.PathEscape(cm.Metadata.Name), cm, nil)
	if errors.Is(err, fs.ErrNotExist) {
		err = c.do(ctx, http.MethodPost, configMapsPath(ns), cm, nil)
		if errors.Is(err, ErrConflict) { // created meanwhile: replace it
			err = c.do(ctx, http.MethodPut, configMapsPath(ns)+"/"+url.PathEscape(cm.Metadata.Name), cm, nil)
		}
	}
	return err
}

// DeleteConfigMap deletes the ConfigMap; one already gone is success.
func (c *Client) DeleteConfigMap(ctx context.Context, ns, name string) error {
	err := c.do(ctx, http.MethodDelete, configMapsPath(ns)+"/"+url.PathEscape(name), nil, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// ListConfigMaps returns the ConfigMaps of ns that match a label selector.
func (c *Client) ListConfigMaps(ctx context.Context, ns, selector string) ([]ConfigMap, error) {
	var all []ConfigMap
	err := c.list(ctx, configMapsPath(ns), url.Values{"labelSelector": {selector}}, func(raw json.RawMessage) error {
		var page []ConfigMap
		if err := json.Unmarshal(raw, &page); err != nil {
			return err
		}
		all = append(all, page...)
		return nil
	})
	return all, err
}

// CSIVolume is what Cistern reads of a PersistentVolume of a CSI driver.
type CSIVolume struct {
	Name       string
	Handle     string
	Attributes map[string]string
}

// ListCSIVolumes returns every PersistentVolume of the CSI driver.
func (c *Client) ListCSIVolumes(ctx context.Context, driver string) ([]CSIVolume, error) {
	var out []CSIVolume
	err := c.list(ctx, "/api/v1/persistentvolumes", nil, func(raw json.RawMessage) error {
		var page []struct {
			Metadata ObjectMeta `json:"metadata"`
			Spec     struct {
				CSI *struct {
					Driver           string            `json:"driver"`
					VolumeHandle     string            `json:"volumeHandle"`
					VolumeAttributes map[string]string `json:"volumeAttributes"`
				} `json:"csi"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(raw, &page); err != nil {
			return err
		}
		for _, pv := range page {
			if s := pv.Spec.CSI; s != nil && s.Driver == driver {
				out = append(out, CSIVolume{Name: pv.Metadata.Name, Handle: s.VolumeHandle, Attributes: s.VolumeAttributes})
			}
		}
		return nil
	})
	return out, err
}

// NodeLabelled reports whether some node carries the label key=value.
func (c *Client) NodeLabelled(ctx context.Context, key, value string) (bool, error) {
	var page struct {
		Items []json.RawMessage `json:"items"`
	}
	q := url.Values{"labelSelector": {key + "=" + value}, "limit": {"1"}}
	if err := c.do(ctx, http.MethodGet, "/api/v1/nodes?"+q.Encode(), nil, &page); err != nil {
		return false, err
	}
	return len(page.Items) > 0, nil
}

// list pages through a list call (500 items a page), handing each page's
// items to each.
func (c *Client) list(ctx context.Context, path string, q url.Values, each func(items json.RawMessage) error) error {
	if q == nil {
		q = url.Values{}
	}
	q.Set("limit", "500")
	for {
		var page struct {
			Metadata struct {
				Continue string `json:"continue"`
			} `json:"metadata"`
			Items json.RawMessage `json:"items"`
		}
		if err := c.do(ctx, http.MethodGet, path+"?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		if len(page.Items) > 0 {
			if err := each(page.Items); err != nil {
				return fmt.Errorf("list %s: %w", path, err)
			}
		}
		if page.Metadata.Continue == "" {
			return nil
		}
		q.Set("continue", page.Metadata.Continue)
	}
}
