// Package templates holds a channel's branded template: the HTML (and optional plain-text) frame that
// wraps what an agent wrote before it reaches the customer ("Create a Branded Template for Outbound
// Emails" in the product guide).
//
// Design: templates are Go html/template (HTML form) and text/template (plain form) over one fixed data
// shape, Data. They are parsed and validated when the configuration is loaded, never at send time, so a
// typo is a check-config error rather than a deferred mail: Parse walks the parse tree and refuses any
// field that Data does not have, refuses a template without the {{.Content}} placeholder, and executes
// the template once on sample data to catch what the tree walk cannot see. The agent's HTML goes into
// {{.Content}} as given (template.HTML): it is the agent application's output and escaping it would show
// the customer raw tags; every other variable is escaped by html/template's contextual escaping.
// Error messages are self-contained (the caller prefixes the config path).
package templates

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"strings"
	texttemplate "text/template"
	"text/template/parse"
)

// Data is what a template can refer to. The field names are the template variables; Variables lists
// them for error messages.
type Data struct {
	// Content is the agent's message: HTML in the HTML form (inserted as given), plain text in the
	// plain-text form.
	Content string
	// DisplayName is the channel's display name, the name customers see in From.
	DisplayName string
	// AgentName is the sending agent's display name.
	AgentName string
	// Ticket is the ticket number without decoration ("123456"), empty for a new outbound message.
	Ticket string
	// Subject is the final subject line, as the customer sees it.
	Subject string
}

// htmlData is Data as the HTML form sees it: Content is trusted HTML.
type htmlData struct {
	Content     htmltemplate.HTML
	DisplayName string
	AgentName   string
	Ticket      string
	Subject     string
}

// variableNames are the names a template may use, in the order error messages list them.
const variableNames = "Content DisplayName AgentName Ticket Subject"

func knownVariable(name string) bool {
	for _, v := range strings.Fields(variableNames) {
		if v == name {
			return true
		}
	}
	return false
}

func variableList() string {
	return "." + strings.ReplaceAll(variableNames, " ", ", .")
}

// Template is one parsed, validated branded template.
type Template struct {
	name string
	html *htmltemplate.Template
	text *texttemplate.Template // nil when the template has no plain-text form
}

// Parse parses and validates a template. html is required and must contain {{.Content}}; text is the
// optional plain-text form (empty = none), which, when given, must contain {{.Content}} too.
func Parse(name, html, text string) (*Template, error) {
	if strings.TrimSpace(html) == "" {
		return nil, errors.New("html: is empty (a template needs HTML with a {{.Content}} placeholder)")
	}
	ht, err := htmltemplate.New(name).Option("missingkey=error").Parse(html)
	if err != nil {
		return nil, fmt.Errorf("html: %s", cleanParseError(err))
	}
	if err := checkTrees("html", treesOfHTML(ht)); err != nil {
		return nil, err
	}
	t := &Template{name: name, html: ht}
	if strings.TrimSpace(text) != "" {
		tt, err := texttemplate.New(name).Option("missingkey=error").Parse(text)
		if err != nil {
			return nil, fmt.Errorf("text: %s", cleanParseError(err))
		}
		if err := checkTrees("text", treesOfText(tt)); err != nil {
			return nil, err
		}
		t.text = tt
	}
	// A trial run on sample data catches what the tree walk cannot (e.g. a function applied to the
	// wrong type, html/template's context errors).
	sample := Data{Content: "<p>sample</p>", DisplayName: "Support", AgentName: "Agent", Ticket: "123456", Subject: "Sample"}
	if _, err := t.RenderHTML(sample); err != nil {
		return nil, fmt.Errorf("html: %s", cleanParseError(err))
	}
	if t.text != nil {
		if _, err := t.RenderText(sample); err != nil {
			return nil, fmt.Errorf("text: %s", cleanParseError(err))
		}
	}
	return t, nil
}

// Name is the template's configured name.
func (t *Template) Name() string { return t.name }

// HasText reports whether the template has a plain-text form.
func (t *Template) HasText() bool { return t.text != nil }

// RenderHTML wraps the agent's HTML (d.Content, inserted as given) in the template.
func (t *Template) RenderHTML(d Data) (string, error) {
	var b bytes.Buffer
	err := t.html.Execute(&b, htmlData{
		Content:     htmltemplate.HTML(d.Content),
		DisplayName: d.DisplayName,
		AgentName:   d.AgentName,
		Ticket:      d.Ticket,
		Subject:     d.Subject,
	})
	if err != nil {
		return "", fmt.Errorf("template %q: %w", t.name, err)
	}
	return b.String(), nil
}

// RenderText wraps the agent's plain text in the template's plain-text form. Without one it returns
// d.Content unchanged, so callers need not special-case templates without a text form.
func (t *Template) RenderText(d Data) (string, error) {
	if t.text == nil {
		return d.Content, nil
	}
	var b bytes.Buffer
	if err := t.text.Execute(&b, d); err != nil {
		return "", fmt.Errorf("template %q: %w", t.name, err)
	}
	return b.String(), nil
}

func treesOfHTML(t *htmltemplate.Template) []*parse.Tree {
	var trees []*parse.Tree
	for _, x := range t.Templates() {
		if x.Tree != nil {
			trees = append(trees, x.Tree)
		}
	}
	return trees
}

func treesOfText(t *texttemplate.Template) []*parse.Tree {
	var trees []*parse.Tree
	for _, x := range t.Templates() {
		if x.Tree != nil {
			trees = append(trees, x.Tree)
		}
	}
	return trees
}

// checkTrees refuses unknown variables anywhere (including branches a sample run would not take) and
// a template set without a {{.Content}} placeholder: a template that drops the agent's message would
// send customers an empty frame.
func checkTrees(form string, trees []*parse.Tree) error {
	hasContent := false
	var firstErr error
	for _, tr := range trees {
		walk(tr.Root, func(n parse.Node) {
			if firstErr != nil {
				return
			}
			var ident []string
			switch x := n.(type) {
			case *parse.FieldNode:
				ident = x.Ident
			case *parse.VariableNode:
				// $.Name refers to the data root like .Name; other variables are the template's own.
				if len(x.Ident) > 1 && x.Ident[0] == "$" {
					ident = x.Ident[1:]
				}
			case *parse.ChainNode:
				firstErr = fmt.Errorf("%s: field access on an expression is not supported (use %s)", form, variableList())
				return
			}
			if len(ident) == 0 {
				return
			}
			name := ident[0]
			switch {
			case !knownVariable(name):
				firstErr = fmt.Errorf("%s: unknown variable .%s (use %s)", form, name, variableList())
			case len(ident) > 1:
				firstErr = fmt.Errorf("%s: .%s is text and has no field .%s (use %s)", form, name, ident[1], variableList())
			case name == "Content":
				hasContent = true
			}
		})
	}
	if firstErr != nil {
		return firstErr
	}
	if !hasContent {
		return fmt.Errorf("%s: no {{.Content}} placeholder (the agent's message would be dropped)", form)
	}
	return nil
}

// walk visits every node of a template parse tree.
func walk(n parse.Node, visit func(parse.Node)) {
	if n == nil {
		return
	}
	visit(n)
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			walk(c, visit)
		}
	case *parse.ActionNode:
		walk(x.Pipe, visit)
	case *parse.PipeNode:
		if x == nil {
			return
		}
		for _, d := range x.Decl {
			walk(d, visit)
		}
		for _, c := range x.Cmds {
			walk(c, visit)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			walk(a, visit)
		}
	case *parse.ChainNode:
		walk(x.Node, visit)
	case *parse.IfNode:
		walkBranch(&x.BranchNode, visit)
	case *parse.RangeNode:
		walkBranch(&x.BranchNode, visit)
	case *parse.WithNode:
		walkBranch(&x.BranchNode, visit)
	case *parse.TemplateNode:
		walk(x.Pipe, visit)
	}
}

func walkBranch(b *parse.BranchNode, visit func(parse.Node)) {
	walk(b.Pipe, visit)
	if b.List != nil {
		walk(b.List, visit)
	}
	if b.ElseList != nil {
		walk(b.ElseList, visit)
	}
}

// cleanParseError removes the "template: NAME:" prefix the template packages add, since the caller
// names the template by its config path.
func cleanParseError(err error) string {
	s := err.Error()
	for _, p := range []string{"html/template:", "template:"} {
		s = strings.TrimSpace(strings.TrimPrefix(s, p))
	}
	return s
}
