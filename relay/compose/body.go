package compose

import (
	"regexp"
	"strings"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/signatures"
	"github.com/mailgate/mailgate/templates"
)

func (j *job) data(content string) templates.Data {
	return templates.Data{
		Content:     content,
		DisplayName: j.ch.DisplayName,
		AgentName:   j.req.Agent.Name,
		Ticket:      j.ticket,
		Subject:     j.subject,
	}
}

// templateError is a template failing at send time although it passed validation at load: a local
// problem, temporary for the client.
func templateError(err error) error {
	return relay.Wrap(err, 451, relay.CodeTempLocal, "template", "local error in processing")
}

// agentText applies the signature (before quoted history, else at the end) and then the template's
// plain-text form, if any.
func (j *job) agentText(text string) (string, error) {
	if sig := j.req.Agent.Signature; sig != nil {
		text = sig.InsertText(text)
	}
	return j.textTemplate(text)
}

// htmlAsText makes the text alternative of an HTML-only message: the agent's HTML read as text
// (signatures.HTMLToText), the plain signature where the HTML one goes (before the quoted history the
// HTML marks, which the text cannot tell), then the template's text form.
func (j *job) htmlAsText(h string) (string, error) {
	text := signatures.HTMLToText(h) + "\n"
	if sig := j.req.Agent.Signature; sig != nil {
		body, quoted := signatures.SplitHTML(h)
		text = signatures.JoinText(signatures.HTMLToText(body), sig.Text, signatures.HTMLToText(quoted))
	}
	return j.textTemplate(text)
}

// textTemplate wraps text in the channel template's plain-text form, if it has one.
func (j *job) textTemplate(text string) (string, error) {
	if t := j.ch.Template; t != nil && t.HasText() {
		out, err := t.RenderText(j.data(text))
		if err != nil {
			return "", templateError(err)
		}
		text = out
	}
	return text, nil
}

// agentHTML applies the signature inside the agent's content (before quoted history, else before
// </body>), then wraps the content in the template: the signature belongs to the agent's words, not
// below the brand's footer.
func (j *job) agentHTML(h string) (string, error) {
	if sig := j.req.Agent.Signature; sig != nil {
		h = sig.InsertHTML(h)
	}
	if t := j.ch.Template; t != nil {
		out, err := t.RenderHTML(j.data(BodyContent(h)))
		if err != nil {
			return "", templateError(err)
		}
		h = out
	}
	return h, nil
}

// textAsHTML makes the HTML alternative of a text-only message: the text escaped with line breaks, the
// HTML signature where the plain one goes, inside the template.
func (j *job) textAsHTML(text string) (string, error) {
	body, quoted := signatures.SplitText(text)
	var b strings.Builder
	b.WriteString("<div>")
	b.WriteString(signatures.TextToHTML(strings.TrimRight(body, " \t\n")))
	b.WriteString("</div>\n")
	if sig := j.req.Agent.Signature; sig != nil {
		b.WriteString(`<div class="signature">` + sig.HTML + "</div>\n")
	}
	if quoted != "" {
		b.WriteString("<div>")
		b.WriteString(signatures.TextToHTML(strings.TrimRight(quoted, " \t\n")))
		b.WriteString("</div>\n")
	}
	out, err := j.ch.Template.RenderHTML(j.data(b.String()))
	if err != nil {
		return "", templateError(err)
	}
	return out, nil
}

var (
	bodyElement  = regexp.MustCompile(`(?is)<body\b[^>]*>(.*)</body\s*>`)
	headElement  = regexp.MustCompile(`(?is)<head\b[^>]*>(.*?)</head\s*>`)
	styleElement = regexp.MustCompile(`(?is)<style\b[^>]*>.*?</style\s*>`)
	docWrapper   = regexp.MustCompile(`(?is)<!doctype[^>]*>|</?html\b[^>]*>|</?body\b[^>]*>`)
)

// BodyContent is what of an agent's HTML document goes into a template's {{.Content}}: the inside of
// <body> (a document inside a document is invalid and clients render it unpredictably), preceded by
// the agent's <style> elements from <head> so its formatting survives. A fragment is returned as is.
func BodyContent(h string) string {
	var styles []string
	if m := headElement.FindStringSubmatch(h); m != nil {
		styles = styleElement.FindAllString(m[1], -1)
	}
	var inner string
	if m := bodyElement.FindStringSubmatch(h); m != nil {
		inner = m[1]
	} else {
		inner = headElement.ReplaceAllString(h, "")
		inner = docWrapper.ReplaceAllString(inner, "")
	}
	if len(styles) == 0 {
		return inner
	}
	return strings.Join(styles, "\n") + "\n" + inner
}
