package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"strings"
	"time"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay/submit"
)

// cmdPreview composes a message for a channel exactly as submission would, so an operator can see a
// template, signature and ticket format before agents use them.
func cmdPreview(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "preview", "")
	cfgPath := fs.String("config", "", "configuration file (default: the development default)")
	channel := fs.String("channel", "", "channel name (required)")
	user := fs.String("user", "", "agent login whose name and signature are used")
	subject := fs.String("subject", "Your request", "subject the agent wrote")
	ticket := fs.String("ticket", "", "ticket number (as X-Mailgate-Ticket)")
	bodyFile := fs.String("body", "", "file with the agent's body: HTML if it starts with '<', else plain text (default: a sample)")
	htmlOut := fs.String("html-out", "", "also write the composed HTML part to this file, for a browser")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *channel == "" {
		fs.Usage()
		return &exitError{code: 2}
	}
	cfg, err := loadOrDevelopment(*cfgPath, "mailgate-data")
	if err != nil {
		return err
	}
	comp, err := buildComposition(cfg, nil)
	if err != nil {
		return err
	}
	ch, ok := comp.channels[*channel]
	if !ok {
		return fmt.Errorf("no channel %q", *channel)
	}
	body := []byte("Hello,\r\n\r\nthank you for your message. Here is what we found.\r\n")
	if *bodyFile != "" {
		if body, err = os.ReadFile(*bodyFile); err != nil {
			return err
		}
	}
	agentName := "Agent"
	for _, u := range cfg.Users {
		if strings.EqualFold(u.Login, *user) {
			agentName = u.Name
		}
	}
	ctype := "text/plain; charset=utf-8"
	if bytes.HasPrefix(bytes.TrimSpace(body), []byte("<")) {
		ctype = "text/html; charset=utf-8"
	}
	var raw bytes.Buffer
	fmt.Fprintf(&raw, "From: %s\r\nTo: customer@example.net\r\nSubject: %s\r\nMIME-Version: 1.0\r\nContent-Type: %s\r\n",
		ch.FromAddress, mime.QEncoding.Encode("utf-8", *subject), ctype)
	if *ticket != "" {
		fmt.Fprintf(&raw, "X-Mailgate-Ticket: %s\r\n", *ticket)
	}
	raw.WriteString("\r\n")
	raw.Write(bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n")))
	var out bytes.Buffer
	sub := &submit.Submission{Channel: &submit.Channel{Name: *channel}, Received: time.Now()}
	sub.Principal = principalFor(*user, agentName)
	if _, err := comp.Compose(ctx, &raw, &out, sub); err != nil {
		return err
	}
	if _, err := env.stdout.Write(out.Bytes()); err != nil {
		return err
	}
	if *htmlOut != "" {
		h, err := htmlPart(out.Bytes())
		if err != nil {
			return fmt.Errorf("--html-out: %w", err)
		}
		if err := os.WriteFile(*htmlOut, h, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "HTML part written to %s\n", *htmlOut)
	}
	return nil
}

// htmlPart finds the first text/html part of a composed message, decoded.
func htmlPart(msg []byte) ([]byte, error) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return nil, err
	}
	return findHTML(m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Body)
}

func findHTML(ctype, cte string, body io.Reader) ([]byte, error) {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				return nil, fmt.Errorf("no text/html part")
			}
			if h, err := findHTML(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p); err == nil {
				return h, nil
			}
		}
	}
	if mt != "text/html" {
		return nil, fmt.Errorf("not html")
	}
	return io.ReadAll(decodeCTE(cte, body))
}

func principalFor(login, name string) *auth.Principal {
	return &auth.Principal{Login: strings.ToLower(login), Name: name}
}

func decodeCTE(cte string, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &newlineStripper{r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// newlineStripper drops CR and LF so base64 bodies wrapped at 76 columns decode.
type newlineStripper struct{ r io.Reader }

func (n *newlineStripper) Read(p []byte) (int, error) {
	for {
		c, err := n.r.Read(p)
		j := 0
		for _, b := range p[:c] {
			if b != '\r' && b != '\n' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}
