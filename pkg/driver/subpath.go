package driver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Sub-path templates.
//
// A template is a '/'-separated relative path whose segments may contain the
// variables below. After substitution the result must be a clean relative
// path inside the dataset: no empty, "." or ".." segment, no NUL, no segment
// longer than a file name may be, and never the reserved ".cistern" tree at
// the dataset root where Cistern keeps its own records.
//
// A dataset that is not shared isolates namespaces: its template must start
// with the namespace variable as a whole first segment, so every volume lives
// under <dataset>/<its namespace>/. A shared dataset is read-only and may be
// served whole (empty template) or from any fixed sub-directory.

// Template variables.
const (
	VarPVCNamespace = "pvc.namespace"
	VarPVCName      = "pvc.name"
	VarPVName       = "pv.name"
	VarPodNamespace = "pod.namespace"
)

// ReservedDir is the directory at a dataset's root that holds Cistern's
// volume records, archives and trash. No volume may resolve into it.
const ReservedDir = api.ReservedDir

// ErrInvalidSubPath is wrapped by every error about a sub-path or template.
var ErrInvalidSubPath = errors.New("invalid sub-path")

func subPathErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidSubPath, fmt.Sprintf(format, a...))
}

// templateVars lists the variables a template may use.
func templateVars(inline bool) []string {
	if inline {
		return []string{VarPodNamespace}
	}
	return []string{VarPVCNamespace, VarPVCName, VarPVName}
}

// checkTemplate validates a template without resolving it.
func checkTemplate(tmpl string, inline, shared bool) error {
	nsVar := "${" + VarPVCNamespace + "}"
	if inline {
		nsVar = "${" + VarPodNamespace + "}"
	}
	if !shared {
		first, _, _ := strings.Cut(tmpl, "/")
		if first != nsVar {
			return subPathErr("parameter %s %q must start with %s as its own segment: a dataset that is not shared keeps each namespace in its own sub-directory", ParamSubPath, tmpl, nsVar)
		}
	}
	// Resolve with placeholder values to check the template's shape.
	vars := map[string]string{}
	for _, v := range templateVars(inline) {
		vars[v] = "x"
	}
	if _, err := expand(tmpl, vars); err != nil {
		return err
	}
	if tmpl == "" {
		return nil
	}
	return checkSubPath(mustExpand(tmpl, vars))
}

func mustExpand(tmpl string, vars map[string]string) string {
	s, err := expand(tmpl, vars)
	if err != nil {
		panic(err)
	}
	return s
}

// expand substitutes ${var} references. Every variable used must be in vars,
// and its value must be a single, valid path segment.
func expand(tmpl string, vars map[string]string) (string, error) {
	var b strings.Builder
	rest := tmpl
	for {
		i := strings.IndexByte(rest, '$')
		if i < 0 {
			b.WriteString(rest)
			return b.String(), nil
		}
		b.WriteString(rest[:i])
		rest = rest[i:]
		if !strings.HasPrefix(rest, "${") {
			return "", subPathErr("parameter %s %q: '$' must start a ${variable}", ParamSubPath, tmpl)
		}
		end := strings.IndexByte(rest, '}')
		if end < 0 {
			return "", subPathErr("parameter %s %q: unterminated ${", ParamSubPath, tmpl)
		}
		name := rest[2:end]
		val, ok := vars[name]
		if !ok {
			return "", subPathErr("parameter %s %q: unknown variable ${%s} (known here: %s)", ParamSubPath, tmpl, name, strings.Join(wrapVars(vars), ", "))
		}
		if val == "" {
			return "", subPathErr("parameter %s %q: variable ${%s} has no value in this request", ParamSubPath, tmpl, name)
		}
		if strings.ContainsAny(val, "/\x00") || val == "." || val == ".." {
			return "", subPathErr("parameter %s %q: variable ${%s} has value %q, which is not a single path segment", ParamSubPath, tmpl, name, val)
		}
		b.WriteString(val)
		rest = rest[end+1:]
	}
}

func wrapVars(vars map[string]string) []string {
	var out []string
	for _, v := range []string{VarPVCNamespace, VarPVCName, VarPVName, VarPodNamespace} {
		if _, ok := vars[v]; ok {
			out = append(out, "${"+v+"}")
		}
	}
	return out
}

// ResolveSubPath expands a checked template with the request's values and
// validates the result. An empty result (the dataset root) is only valid for a
// shared dataset, whose template may be empty.
func ResolveSubPath(tmpl string, vars map[string]string) (string, error) {
	s, err := expand(tmpl, vars)
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", nil
	}
	if err := checkSubPath(s); err != nil {
		return "", err
	}
	return s, nil
}

// checkSubPath validates a resolved, non-empty sub-path: the rules of every
// path inside a dataset (source.CheckPath), and never inside ReservedDir.
func checkSubPath(s string) error {
	if err := source.CheckPath(s); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSubPath, err)
	}
	if first, _, _ := strings.Cut(s, "/"); first == ReservedDir {
		return subPathErr("sub-path %q is inside %s, which Cistern reserves for its own records", s, ReservedDir)
	}
	return nil
}

// overlaps reports whether one sub-path equals, contains or is contained in
// the other (by whole segments). The empty sub-path is the dataset root and
// overlaps everything.
func overlaps(a, b string) bool {
	if a == "" || b == "" || a == b {
		return true
	}
	return strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}
