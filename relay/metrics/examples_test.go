package metrics_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/mailgate/mailgate/relay/metrics"
)

// exported is the set of series names mailgate exports: every collector of metrics.New, histograms
// with their _bucket, _sum and _count series.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	descs := make(chan *prometheus.Desc, 256)
	go func() {
		// A Registry is a Collector: Describe reports every registered Desc.
		reg.Describe(descs)
		close(descs)
	}()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range descs {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read the name of %s", d)
		}
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			names[m[1]+suffix] = true
		}
	}
	return names
}

var metricName = regexp.MustCompile(`\bmailgate_[a-z0-9_]+`)

func checkNames(t *testing.T, where, expr string, names map[string]bool) {
	t.Helper()
	found := metricName.FindAllString(expr, -1)
	if len(found) == 0 && !strings.Contains(expr, "up{") {
		t.Errorf("%s: query %q names no mailgate metric", where, expr)
	}
	for _, n := range found {
		if !names[n] {
			t.Errorf("%s: query %q names %s, which mailgate does not export", where, expr, n)
		}
	}
}

// TestAlertRules: the example alerting rules pass promtool and name only metrics mailgate exports.
func TestAlertRules(t *testing.T) {
	const file = "../../examples/prometheus/alerts.yml"
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: scripts/install-test-deps.sh installs Debian's prometheus package")
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	names, n := exported(t), 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			checkNames(t, r.Alert, r.Expr, names)
		}
	}
	if n < 5 {
		t.Fatalf("only %d rules", n)
	}
}

// TestGrafanaDashboard: every panel of the example dashboard queries metrics mailgate exports.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../../examples/grafana/mailgate.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Type    string
			GridPos *struct{ W, H int } `json:"gridPos"`
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	if dash.Title == "" || len(dash.Panels) < 8 {
		t.Fatalf("dashboard %q with %d panels", dash.Title, len(dash.Panels))
	}
	names := exported(t)
	for _, p := range dash.Panels {
		if p.Title == "" || p.Type == "" || p.GridPos == nil || p.GridPos.W == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %+v is incomplete", p)
		}
		for _, tg := range p.Targets {
			checkNames(t, "panel "+p.Title, tg.Expr, names)
		}
	}
}
