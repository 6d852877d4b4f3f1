package ses

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mailgate/mailgate/relay"
)

// sendRequest is the JSON body of POST /v2/email/outbound-emails as SES receives it.
type sendRequest struct {
	FromEmailAddress            string
	ConfigurationSetName        string
	Destination                 struct{ ToAddresses, CcAddresses, BccAddresses []string }
	Content                     struct{ Raw struct{ Data []byte } } // base64 in JSON, decoded by encoding/json
	EmailTags                   []struct{ Name, Value string }
	TenantName                  string
	FromEmailAddressIdentityArn string
}

// sesAnswer is what the fake SES answers: an error shape (X-Amzn-ErrorType + {"message"}) when
// ErrorType or a non-200 Status is set, else a MessageId.
type sesAnswer struct {
	Status    int
	ErrorType string
	Message   string
	RawBody   string // replaces the JSON body (e.g. the HTML of a 413 from a proxy)
}

// fakeSES is an httptest server speaking SES v2's REST-JSON: SendEmail, GetAccount and
// GetConfigurationSet, answering with the shapes real SES uses, so error handling is tested through the
// real SDK deserializers.
type fakeSES struct {
	*httptest.Server
	mu       sync.Mutex
	sends    []sendRequest
	answer   func(n int, req sendRequest) sesAnswer // n counts SendEmail calls from 1
	policies map[string]string                      // configuration set → TLS policy ("" = absent, "UNAVAILABLE" = HTTP 503)
	account  string                                 // GetAccount JSON; "" = BadRequest like the emulator
	// identities maps an identity (address or domain) to its GetEmailIdentity JSON; absent = 404
	// NotFoundException, as SES answers for an identity the account does not have.
	identities map[string]string
}

func newFakeSES(t testing.TB) *fakeSES {
	f := &fakeSES{policies: map[string]string{}, identities: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v2/email/outbound-emails", func(w http.ResponseWriter, r *http.Request) {
		var req sendRequest
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &req); err != nil {
			writeSESError(w, sesAnswer{Status: 400, ErrorType: "BadRequestException", Message: "bad json: " + err.Error()})
			return
		}
		f.mu.Lock()
		f.sends = append(f.sends, req)
		n := len(f.sends)
		answer := f.answer
		f.mu.Unlock()
		a := sesAnswer{}
		if answer != nil {
			a = answer(n, req)
		}
		if a.Status != 0 && a.Status != 200 || a.ErrorType != "" {
			writeSESError(w, a)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"MessageId":"0102018f-fake-%06d"}`, n)
	})
	mux.HandleFunc("GET /v2/email/account", func(w http.ResponseWriter, r *http.Request) {
		if f.account == "" {
			writeSESError(w, sesAnswer{Status: 400, ErrorType: "BadRequestException", Message: "Account not found"})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, f.account)
	})
	mux.HandleFunc("GET /v2/email/configuration-sets/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		policy, ok := f.policies[name]
		f.mu.Unlock()
		if !ok {
			writeSESError(w, sesAnswer{Status: 404, ErrorType: "NotFoundException", Message: "Configuration set <" + name + "> does not exist."})
			return
		}
		if policy == "UNAVAILABLE" {
			writeSESError(w, sesAnswer{Status: 503, Message: "Service Unavailable"})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if policy == "" {
			fmt.Fprintf(w, `{"ConfigurationSetName":%q}`, name)
			return
		}
		fmt.Fprintf(w, `{"ConfigurationSetName":%q,"DeliveryOptions":{"TlsPolicy":%q}}`, name, policy)
	})
	mux.HandleFunc("GET /v2/email/identities/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		f.mu.Lock()
		body, ok := f.identities[id]
		f.mu.Unlock()
		if !ok {
			writeSESError(w, sesAnswer{Status: 404, ErrorType: "NotFoundException", Message: "Email identity <" + id + "> does not exist."})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

func writeSESError(w http.ResponseWriter, a sesAnswer) {
	status := a.Status
	if status == 0 {
		status = 400
	}
	if a.ErrorType != "" {
		// Real SES sends the shape name, sometimes followed by ":<namespace URL>".
		w.Header().Set("X-Amzn-ErrorType", a.ErrorType+":http://internal.amazon.com/coral/com.amazonaws.sesv2/")
	}
	if a.RawBody != "" {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		io.WriteString(w, a.RawBody)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"message": a.Message})
	w.Write(b)
}

func (f *fakeSES) requests() []sendRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sendRequest(nil), f.sends...)
}

// newTestTransport builds a Transport on the real SDK client pointed at endpoint, with static
// credentials (so the EC2 metadata service is never consulted).
func newTestTransport(t testing.TB, endpoint string, opts Options) *Transport {
	t.Helper()
	opts.Region = "eu-west-1"
	opts.Endpoint = endpoint
	opts.Credentials = credentials.NewStaticCredentialsProvider("AKIDTEST", "test-secret", "")
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	tr, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// testMessage is a composed message with a Bcc recipient that appears in no header.
func testMessage(body string, rcpts ...string) *relay.Message {
	return &relay.Message{
		QueueID:    "q0001",
		Channel:    "Support",
		MailFrom:   "bounces@mail.example.com",
		Recipients: rcpts,
		MessageID:  "ticket-123456.abc@example.com",
		Size:       int64(len(body)),
		Open:       func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil },
	}
}

func composed(subject, text string) string {
	var b bytes.Buffer
	b.WriteString("From: Example Support <support@example.com>\r\n")
	b.WriteString("To: Customer <customer@example.org>\r\n")
	b.WriteString("Subject: " + subject + "\r\n")
	b.WriteString("Message-ID: <ticket-123456.abc@example.com>\r\n")
	b.WriteString("Date: Fri, 27 Nov 2026 05:00:00 +0000\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("\r\n")
	b.WriteString(text + "\r\n")
	return b.String()
}
