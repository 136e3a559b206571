package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client talks to a cistern-cache daemon over its unix socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client of the daemon at socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: tr}}
}

// APIError is an error answered by the daemon.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("cache daemon: %s (HTTP %d)", e.Message, e.Status)
}

// IsBadRequest reports whether err is the daemon refusing the request's content.
func IsBadRequest(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusBadRequest || ae.Status == http.StatusConflict)
}

// IsForbidden reports whether the source refused the credentials.
func IsForbidden(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusForbidden
}

// IsNotFound reports whether err is the daemon not finding what was named.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://cistern-cache"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cache daemon: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e ErrorResponse
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

// Mount asks for a dataset's mount.
func (c *Client) Mount(ctx context.Context, req MountRequest) (MountResponse, error) {
	var resp MountResponse
	err := c.do(ctx, http.MethodPost, "/v1/mount", req, &resp)
	return resp, err
}

// Release drops a holder.
func (c *Client) Release(ctx context.Context, holder string) error {
	return c.do(ctx, http.MethodPost, "/v1/release", ReleaseRequest{Holder: holder}, nil)
}

// Health asks the daemon whether it serves (every mounted dataset answers
// through its FUSE mount); nil when it does.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}

// Stats returns the daemon's stats.
func (c *Client) Stats(ctx context.Context) (StatsResponse, error) {
	var resp StatsResponse
	err := c.do(ctx, http.MethodGet, "/v1/stats", nil, &resp)
	return resp, err
}

// Evict drops cached files of a dataset under prefix.
func (c *Client) Evict(ctx context.Context, key, prefix string) (int, error) {
	var resp EvictResponse
	err := c.do(ctx, http.MethodPost, "/v1/evict", EvictRequest{Key: key, Prefix: prefix}, &resp)
	return resp.Evicted, err
}

// Warmup prefetches paths of a dataset, calling progress as it goes.
func (c *Client) Warmup(ctx context.Context, key string, paths []string, progress func(WarmupProgress)) error {
	resp, err := c.send(ctx, http.MethodPost, "/v1/warmup", WarmupRequest{Key: key, Paths: paths})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var p WarmupProgress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return fmt.Errorf("warm-up progress: %w", err)
		}
		if p.Error != "" {
			return errors.New(p.Error)
		}
		if progress != nil {
			progress(p)
		}
		if p.Done {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("warm-up stream ended early")
}
