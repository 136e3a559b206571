package group

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
)

// A member owns blocks only of the datasets it serves (it has the
// credentials of, because a volume of it is mounted there): the others
// could not fetch them. Each member says which it serves, by their public
// IDs, and every member places a dataset's blocks over the members that
// serve it (Rings).
//
//	GET /v1/datasets: {"datasets": [<dataset ID>, ...]}

const datasetsPath = "/v1/datasets"

type datasetList struct {
	Datasets []string `json:"datasets"`
}

// Serving returns the IDs of the datasets the server serves, sorted.
func (s *Server) Serving() []string {
	s.mu.RLock()
	ids := make([]string, 0, len(s.datasets))
	for id := range s.datasets {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	slices.Sort(ids)
	return ids
}

func (s *Server) serveDatasets(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(datasetList{Datasets: s.Serving()})
}

// Datasets asks member m which datasets it serves (their IDs), waiting at
// most the client's Deadline.
func (c *Client) Datasets(ctx context.Context, m Member) ([]string, error) {
	resp, cancel, err := c.get(ctx, "https://"+m.Addr+datasetsPath)
	if err != nil {
		return nil, fmt.Errorf("member %s: datasets: %w", m.ID, err)
	}
	defer cancel()
	defer resp.Body.Close()
	var l datasetList
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&l); err != nil {
		return nil, fmt.Errorf("member %s: datasets: %w", m.ID, err)
	}
	return l.Datasets, nil
}

// Rings places each dataset's blocks over the members that serve it:
// serving maps a member's ID to the IDs of the datasets it serves.
// A dataset no member serves has no ring.
func Rings(members []Member, serving map[string][]string) (map[string]*Ring, error) {
	by := map[string][]Member{}
	for _, m := range members {
		for _, id := range serving[m.ID] {
			by[id] = append(by[id], m)
		}
	}
	out := make(map[string]*Ring, len(by))
	for id, ms := range by {
		r, err := NewRing(ms)
		if err != nil {
			return nil, err
		}
		out[id] = r
	}
	return out, nil
}
