package templates

import (
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, html, text, want string
	}{
		{"empty html", "", "", "html: is empty"},
		{"syntax", "<p>{{.Content}</p>", "", "html: "},
		{"unknown variable", "<p>{{.Content}}{{.Foo}}</p>", "", "html: unknown variable .Foo (use .Content, .DisplayName, .AgentName, .Ticket, .Subject)"},
		{"unknown in untaken branch", "{{.Content}}{{if not .Ticket}}{{.Agent}}{{end}}", "", "unknown variable .Agent"},
		{"unknown via $", "{{.Content}}{{with .Subject}}{{$.Nope}}{{end}}", "", "unknown variable .Nope"},
		{"field of text", "{{.Content}}{{.Subject.Length}}", "", ".Subject is text and has no field .Length"},
		{"no placeholder", "<p>{{.DisplayName}}</p>", "", "html: no {{.Content}} placeholder"},
		{"text unknown", "{{.Content}}", "{{.Content}} {{.Ticketnumber}}", "text: unknown variable .Ticketnumber"},
		{"text no placeholder", "{{.Content}}", "Hello {{.AgentName}}", "text: no {{.Content}} placeholder"},
		{"unknown function", "{{.Content}}{{upper .Subject}}", "", `html: `},
		{"bad context", `{{.Content}}<a href="{{.Subject}}`, "", "html: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("brand", c.html, c.text)
			if err == nil {
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to contain %q", err, c.want)
			}
			if strings.Contains(err.Error(), "template: brand") {
				t.Errorf("error %q repeats the template name (the caller prefixes the config path)", err)
			}
		})
	}
}

func TestRender(t *testing.T) {
	tm, err := Parse("brand",
		`<html><head><title>{{.Subject}}</title></head><body><h1>{{.DisplayName}}</h1>{{.Content}}<p>{{if .Ticket}}Ticket {{.Ticket}}{{end}} – {{.AgentName}}</p></body></html>`,
		"{{.DisplayName}}\n\n{{.Content}}\n-- {{.AgentName}}")
	if err != nil {
		t.Fatal(err)
	}
	d := Data{Content: `<p>Hello <b>you</b></p>`, DisplayName: `Shop & "Co" <sales>`, AgentName: "Jane <script>", Ticket: "42", Subject: "Re: <urgent>"}
	h, err := tm.RenderHTML(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`<title>Re: &lt;urgent&gt;</title>`,
		`<h1>Shop &amp; &#34;Co&#34; &lt;sales&gt;</h1>`,
		`<p>Hello <b>you</b></p>`, // the agent's HTML goes in as given
		`Ticket 42 – Jane &lt;script&gt;`,
	} {
		if !strings.Contains(h, want) {
			t.Errorf("html lacks %q:\n%s", want, h)
		}
	}
	txt, err := tm.RenderText(Data{Content: "Hi <b>", DisplayName: "Shop & Co", AgentName: "Jane"})
	if err != nil {
		t.Fatal(err)
	}
	if txt != "Shop & Co\n\nHi <b>\n-- Jane" {
		t.Errorf("text %q", txt)
	}
	if !tm.HasText() || tm.Name() != "brand" {
		t.Error("HasText/Name")
	}
	noText, err := Parse("plain", "{{.Content}}", "")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := noText.RenderText(Data{Content: "as is"}); got != "as is" || noText.HasText() {
		t.Errorf("no text form: %q", got)
	}
}

// FuzzParse: any template text either parses into a template that renders, or is refused with an
// error; never a panic.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"{{.Content}}", "<b>{{.DisplayName}}</b>{{.Content}}", "{{range .Content}}{{.}}{{end}}", "{{define \"x\"}}{{.Foo}}{{end}}{{.Content}}", "{{template \"x\" .}}"} {
		f.Add(s, "")
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, html, text string) {
		tm, err := Parse("f", html, text)
		if err != nil {
			return
		}
		if _, err := tm.RenderHTML(Data{Content: "<p>x</p>", Subject: "s"}); err != nil {
			t.Fatalf("parsed but does not render: %v", err)
		}
		if _, err := tm.RenderText(Data{Content: "x"}); err != nil {
			t.Fatalf("parsed but text does not render: %v", err)
		}
	})
}
