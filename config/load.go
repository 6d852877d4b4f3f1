package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
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
			for _, e := range te.Errors {
				ps.add("", "%s", strings.TrimPrefix(e, "yaml: "))
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
