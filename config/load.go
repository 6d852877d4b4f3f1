package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a configuration, at a path such as "channels[1].transport".
type Problem struct {
	Path string
	Msg  string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Msg
	}
	return p.Path + ": " + p.Msg
}

// Problems is every problem found in a file; as an error it lists them one per line.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (ps *Problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Load reads, decodes and validates the file at path. On any problem it returns a nil config and a
// Problems error listing all of them.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{{Msg: fmt.Sprintf("cannot read config: %v", err)}}
	}
	return Parse(data)
}

// Parse is Load for bytes already read.
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		return nil, Problems{{Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	// Unknown keys and values of the wrong type are problems like any other: decoding and validation
	// go on, so one run lists everything (a typo must not hide the real mistakes behind it).
	var ps Problems
	if len(root.Content) == 1 {
		unknownKeys(root.Content[0], reflect.TypeOf(Config{}), "", &ps)
	}
	var c Config
	if err := root.Decode(&c); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			var vs []valueAt
			if len(root.Content) == 1 {
				vs = values(root.Content[0], "", nil)
			}
			for _, e := range te.Errors {
				path, msg := typeProblem(strings.TrimPrefix(e, "yaml: "), vs)
				ps.add(path, "%s", msg)
			}
		} else {
			// Nothing was decoded (e.g. a key defined twice): validating the empty rest would only
			// list consequences.
			ps.add("", "%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return nil, ps
		}
	}
	c.ApplyDefaults()
	var vs Problems
	if err := c.Validate(); err != nil && !errors.As(err, &vs) {
		return nil, err
	}
	if ps = append(ps, vs...); len(ps) > 0 {
		return nil, ps
	}
	return &c, nil
}

// unknownKeys walks a mapping node against the struct type t and reports keys no field names, with
// their paths, so that a typo anywhere is found together with every other problem.
func unknownKeys(n *yaml.Node, t reflect.Type, path string, ps *Problems) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode || t == reflect.TypeOf(time.Time{}) {
			return
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			sub := join(path, key)
			ft, ok := fields[key]
			if !ok {
				ps.add(sub, "unknown key (line %d); known keys here: %s", n.Content[i].Line, strings.Join(sortedKeys(fields), ", "))
				continue
			}
			unknownKeys(n.Content[i+1], ft, sub, ps)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, item := range n.Content {
			unknownKeys(item, t.Elem(), path+"["+strconv.Itoa(i)+"]", ps)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			unknownKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), ps)
		}
	}
}

// valueAt is a value of the document (a scalar, or a whole mapping or sequence) with the key path that
// leads to it.
type valueAt struct {
	path, kind, value string // kind: str (any scalar), map or seq
	line              int
}

// values lists every value under n with its path (smtp_servers[0].chunking), for naming the key of a
// value of the wrong type: yaml.v3 reports those by line only.
func values(n *yaml.Node, path string, out []valueAt) []valueAt {
	switch n.Kind {
	case yaml.ScalarNode:
		out = append(out, valueAt{path: path, kind: "str", value: n.Value, line: n.Line})
	case yaml.MappingNode:
		out = append(out, valueAt{path: path, kind: "map", line: n.Line})
		for i := 0; i+1 < len(n.Content); i += 2 {
			out = values(n.Content[i+1], join(path, n.Content[i].Value), out)
		}
	case yaml.SequenceNode:
		out = append(out, valueAt{path: path, kind: "seq", line: n.Line})
		for i, item := range n.Content {
			out = values(item, path+"["+strconv.Itoa(i)+"]", out)
		}
	}
	return out
}

// typeError is yaml.v3's text for a value of the wrong type: a scalar (with its text) or a whole
// mapping or sequence.
var typeError = regexp.MustCompile("^line ([0-9]+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$")

// typeProblem turns "line 85: cannot unmarshal !!str `maybe` into bool" into the key's path and a
// message that says what the key takes; a message it does not recognise is kept as it is.
func typeProblem(msg string, vs []valueAt) (path, problem string) {
	m := typeError.FindStringSubmatch(msg)
	if m == nil {
		return "", msg
	}
	line, _ := strconv.Atoi(m[1])
	kind, got := "str", fmt.Sprintf("%q", m[3])
	switch m[2] {
	case "map":
		kind, got = "map", "a mapping"
	case "seq":
		kind, got = "seq", "a list"
	}
	// yaml.v3 shortens a long value to its first 7 characters and "...".
	shown := strings.TrimSuffix(m[3], "...")
	for _, v := range vs {
		if v.line == line && v.kind == kind && (path == "" || strings.HasPrefix(v.value, shown)) && v.path != "" {
			path = v.path
			if kind == "str" {
				got = fmt.Sprintf("%q", v.value)
			}
		}
	}
	want := m[4]
	switch {
	case want == "bool":
		want = "true or false"
	case strings.HasPrefix(want, "int") || strings.HasPrefix(want, "uint"):
		want = "a whole number"
	case want == "string":
		want = "a single value"
	case strings.HasPrefix(want, "[]"):
		want = "a list"
	case strings.HasPrefix(want, "map[") || strings.Contains(want, "."):
		want = "a mapping of keys"
	}
	return path, fmt.Sprintf("%s is not valid here (line %d): the value must be %s", got, line, want)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys(m map[string]reflect.Type) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// UnmarshalYAML reads "90s", "15m", "120h" (and "5d" for days, which operators write for queue lifetimes).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	s := strings.TrimSpace(n.Value)
	if strings.HasSuffix(s, "d") {
		days, err := strconv.ParseFloat(strings.TrimSuffix(s, "d"), 64)
		if err != nil {
			return fmt.Errorf("line %d: invalid duration %q (write e.g. 90s, 15m, 4h, 5d)", n.Line, s)
		}
		*d = Duration(time.Duration(days * float64(24*time.Hour)))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q (write e.g. 90s, 15m, 4h, 5d)", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as Go prints it.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }
