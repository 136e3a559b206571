package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// statusError carries the HTTP status of a control-API error.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", d.serveHealth)
	mux.HandleFunc("POST /v1/mount", func(w http.ResponseWriter, r *http.Request) {
		var req api.MountRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := d.Mount(r.Context(), req)
		reply(w, resp, err)
	})
	mux.HandleFunc("POST /v1/release", func(w http.ResponseWriter, r *http.Request) {
		var req api.ReleaseRequest
		if !decode(w, r, &req) {
			return
		}
		d.Release(req.Holder)
		reply(w, struct{}{}, nil)
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Stats(), nil)
	})
	mux.HandleFunc("POST /v1/evict", func(w http.ResponseWriter, r *http.Request) {
		var req api.EvictRequest
		if !decode(w, r, &req) {
			return
		}
		n, err := d.Evict(req.Key, req.Prefix)
		reply(w, api.EvictResponse{Evicted: n}, err)
	})
	mux.HandleFunc("POST /v1/warmup", func(w http.ResponseWriter, r *http.Request) {
		var req api.WarmupRequest
		if !decode(w, r, &req) {
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		fl, _ := w.(http.Flusher)
		var mu sync.Mutex
		last := time.Time{}
		err := d.Warmup(r.Context(), req.Key, req.Paths, func(p api.WarmupProgress) {
			mu.Lock()
			defer mu.Unlock()
			if !p.Done && time.Since(last) < 100*time.Millisecond {
				return
			}
			last = time.Now()
			_ = enc.Encode(p)
			if fl != nil {
				fl.Flush()
			}
		})
		if err != nil {
			_ = enc.Encode(api.WarmupProgress{Error: err.Error(), Done: true})
		}
	})
	return mux
}

// maxRequest bounds a control request's body.
const maxRequest = 1 << 20

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, nil, &statusError{http.StatusBadRequest, fmt.Errorf("bad request: %w", err)})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		var se *statusError
		if errors.As(err, &se) {
			code = se.code
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
