package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-message"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay/compose"
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
	raw := fs.Bool("raw", false, "print the message as it is sent (MIME, transfer-encoded) instead of decoded for reading")
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
		return unknownChannel(cfg, *channel)
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
	var in bytes.Buffer
	fmt.Fprintf(&in, "From: %s\r\nTo: customer@example.net\r\nSubject: %s\r\nMIME-Version: 1.0\r\nContent-Type: %s\r\n",
		ch.FromAddress, mime.QEncoding.Encode("utf-8", *subject), ctype)
	if *ticket != "" {
		fmt.Fprintf(&in, "X-Mailgate-Ticket: %s\r\n", *ticket)
	}
	in.WriteString("\r\n")
	in.Write(bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n")))
	var out bytes.Buffer
	sub := &submit.Submission{Channel: &submit.Channel{Name: *channel}, Received: time.Now()}
	sub.Principal = principalFor(*user, agentName)
	if _, err := comp.Compose(ctx, &in, &out, sub); err != nil {
		return err
	}
	if *raw {
		_, err = env.stdout.Write(out.Bytes())
	} else {
		err = printReadable(env.stdout, out.Bytes())
	}
	if err != nil {
		return err
	}
	if *htmlOut != "" {
		_, html, err := compose.Bodies(bytes.NewReader(out.Bytes()))
		if err == nil && html == "" {
			err = errors.New("the composed message has no text/html part")
		}
		if err != nil {
			return fmt.Errorf("--html-out: %w", err)
		}
		if err := os.WriteFile(*htmlOut, []byte(html), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "HTML part written to %s\n", *htmlOut)
	}
	return nil
}

// printReadable prints a composed message for a person: the header fields in order, unfolded and with
// encoded words decoded, then every part's content decoded (go-message: transfer encoding and
// charset) under a line naming its type; attachments by name and size only. --raw prints the wire form.
func printReadable(w io.Writer, msg []byte) error {
	m, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return err
	}
	for f := m.Header.Fields(); f.Next(); {
		v, err := f.Text() // unfolded, encoded words decoded
		if err != nil {
			v = f.Value()
		}
		key := f.Key()
		if raw, err := f.Raw(); err == nil {
			key, _, _ = strings.Cut(string(raw), ":") // as composed, not canonicalised (Message-ID)
		}
		fmt.Fprintf(w, "%s: %s\n", key, v)
	}
	return m.Walk(func(_ []int, e *message.Entity, err error) error {
		if err != nil {
			return err
		}
		if e.MultipartReader() != nil {
			return nil
		}
		mt, params, _ := e.Header.ContentType()
		content, err := io.ReadAll(e.Body)
		if err != nil {
			return err
		}
		if disp, dp, _ := e.Header.ContentDisposition(); disp == "attachment" || !strings.HasPrefix(mt, "text/") {
			name := dp["filename"]
			if name == "" {
				name = params["name"]
			}
			fmt.Fprintf(w, "\n--- attachment %q (%s, %d bytes) ---\n", name, mt, len(content))
			return nil
		}
		fmt.Fprintf(w, "\n--- %s ---\n%s\n", mt, strings.TrimRight(strings.ReplaceAll(string(content), "\r\n", "\n"), "\n"))
		return nil
	})
}

func principalFor(login, name string) *auth.Principal {
	return &auth.Principal{Login: strings.ToLower(login), Name: name}
}
