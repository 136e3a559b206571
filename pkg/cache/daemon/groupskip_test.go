package daemon

import (
	"errors"
	"strings"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/go-logr/logr/funcr"
)

// TestSkippedMembersAreLogged: a member the group client puts aside is
// logged (its blocks then cost source reads), once a minute per member.
func TestSkippedMembersAreLogged(t *testing.T) {
	var lines []string
	g := &groupMember{log: funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{})}
	g.skipped(group.Member{ID: "m1"}, errors.New("silent for 2s"))
	g.skipped(group.Member{ID: "m1"}, errors.New("silent for 2s"))
	g.skipped(group.Member{ID: "m2"}, errors.New("HTTP 503"))
	if len(lines) != 2 || !strings.Contains(lines[0], `"peer"="m1"`) || !strings.Contains(lines[0], "silent for 2s") || !strings.Contains(lines[1], `"peer"="m2"`) {
		t.Errorf("logged %q; want m1 once, then m2", lines)
	}
}
