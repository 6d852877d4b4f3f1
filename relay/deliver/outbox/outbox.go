// Package outbox is the development transport: each delivered message is written, durably, as a .eml
// file into a directory, so that `mailgate serve` with no configuration shows exactly what a customer
// would receive without any upstream. The file starts with Return-Path and X-Envelope-To
// lines recording the envelope, as a local delivery agent would.
package outbox

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mailgate/mailgate/relay"
)

// Outbox writes messages into Dir.
type Outbox struct {
	Dir string
}

// Deliver writes one file per message (named by queue id) containing the envelope and the message.
func (o *Outbox) Deliver(ctx context.Context, m *relay.Message) relay.Result {
	if err := o.write(m); err != nil {
		return relay.Failed(len(m.Recipients), relay.Wrap(err, 451, relay.CodeTempLocal, "outbox_write", "outbox write failed"))
	}
	return relay.Result{Reply: "250 2.0.0 written to " + filepath.Join(o.Dir, m.QueueID+".eml"), Errs: make([]error, len(m.Recipients))}
}

func (o *Outbox) write(m *relay.Message) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	body, err := m.Open()
	if err != nil {
		return err
	}
	defer body.Close()
	final := filepath.Join(o.Dir, m.QueueID+".eml")
	return relay.WriteFileAtomic(final, 0o644, func(w io.Writer) error {
		if _, err := fmt.Fprintf(w, "Return-Path: <%s>\r\nX-Envelope-To: %s\r\n", m.MailFrom, strings.Join(m.Recipients, ", ")); err != nil {
			return err
		}
		_, err := io.Copy(w, body)
		return err
	})
}
