package compose

import (
	"io"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // non-UTF-8 charsets for message.Read
)

// Bodies extracts the first text/plain and text/html bodies of a message that are not attachments,
// decoded to UTF-8 (for `mailgate preview --html-out` and tests).
func Bodies(r io.Reader) (text, html string, err error) {
	m, err := message.Read(r)
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return "", "", err
	}
	err = m.Walk(func(path []int, e *message.Entity, err error) error {
		if err != nil {
			return err
		}
		mt, _, _ := e.Header.ContentType()
		if disp, _, _ := e.Header.ContentDisposition(); disp == "attachment" {
			return nil
		}
		if mt != "text/plain" && mt != "text/html" {
			return nil
		}
		// go-message decodes transfer encoding and charset (the charset package registers itself).
		b, err := io.ReadAll(e.Body)
		if err != nil {
			return err
		}
		if mt == "text/plain" && text == "" {
			text = string(b)
		}
		if mt == "text/html" && html == "" {
			html = string(b)
		}
		return nil
	})
	return text, html, err
}
