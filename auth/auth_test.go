package auth

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/crypto/bcrypt"
)

func hash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func testDirectory(t testing.TB) *Directory {
	t.Helper()
	d, err := NewDirectory(
		[]User{
			{Login: "Alice", Name: "Alice A", PasswordHash: hash(t, "s3cret"), Role: "agent", BusinessUnit: "emea"},
			{Login: "bob", Name: "Bob B", PasswordHash: hash(t, "hunter2"), Role: "lead", BusinessUnit: "us"},
		},
		[]Role{
			{Name: "agent", Channels: map[string]Permission{"Support": {Reply: true}}},
			{Name: "lead", Channels: map[string]Permission{"Support": {Reply: true, Outbound: true}, "Sales": {Reply: true}}},
			{Name: "app", Channels: map[string]Permission{"Notify": {Reply: true, Outbound: true}}},
			{Name: "narrow", Channels: map[string]Permission{"Billing": {Reply: true}}},
		},
		[]TrustedNetwork{
			{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Principal: "crm", Role: "app", BusinessUnit: "emea"},
			{Prefix: netip.MustParsePrefix("10.1.2.0/24"), Principal: "billing-app", Role: "narrow"},
			{Prefix: netip.MustParsePrefix("2001:db8::/32"), Principal: "crm6", Role: "app"},
		},
	)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestAuthenticate(t *testing.T) {
	d := testDirectory(t)
	for _, tc := range []struct {
		login, password string
		want            string // principal login, "" = refused
	}{
		{"alice", "s3cret", "alice"},
		{"ALICE", "s3cret", "alice"}, // logins are case-insensitive
		{"alice", "S3cret", ""},      // passwords are not
		{"alice", "", ""},
		{"bob", "hunter2", "bob"},
		{"bob", "s3cret", ""},
		{"carol", "s3cret", ""}, // unknown login
		{"", "", ""},
		{"bob", "hunter2" + strings.Repeat("x", 80), ""}, // > 72 bytes: never right
	} {
		p, err := d.Authenticate(tc.login, tc.password)
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrBadCredentials) {
				t.Errorf("Authenticate(%q) = %v, %v; want ErrBadCredentials", tc.login, p, err)
			}
			continue
		}
		if err != nil || p.Login != tc.want || p.Service {
			t.Errorf("Authenticate(%q) = %+v, %v; want %s", tc.login, p, err, tc.want)
		}
	}
}

// A password whose first 72 bytes match must still be refused when it is longer (bcrypt truncates).
func TestAuthenticateLongPassword(t *testing.T) {
	pw := strings.Repeat("p", 72)
	d, err := NewDirectory([]User{{Login: "u", PasswordHash: hash(t, pw), Role: "r"}}, []Role{{Name: "r"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Authenticate("u", pw); err != nil {
		t.Fatalf("72-byte password refused: %v", err)
	}
	if _, err := d.Authenticate("u", pw+"extra"); err == nil {
		t.Fatal("73+ byte password accepted")
	}
}

func TestPermissions(t *testing.T) {
	d := testDirectory(t)
	alice, _ := d.Principal("alice")
	bob, _ := d.Principal("BOB")
	crm, _ := d.Trusted(netip.MustParseAddr("10.9.9.9"))
	billing, _ := d.Trusted(netip.MustParseAddr("10.1.2.3"))
	for _, tc := range []struct {
		who     *Principal
		channel string
		want    Permission
	}{
		{alice, "Support", Permission{Reply: true}},
		{alice, "Sales", Permission{}},
		{alice, "support", Permission{}}, // channel names are exact
		{bob, "Support", Permission{Reply: true, Outbound: true}},
		{bob, "Sales", Permission{Reply: true}},
		{crm, "Notify", Permission{Reply: true, Outbound: true}},
		{crm, "Support", Permission{}},
		{billing, "Billing", Permission{Reply: true}}, // longest prefix wins over 10/8
		{billing, "Notify", Permission{}},
		{nil, "Support", Permission{}},
	} {
		if got := tc.who.May(tc.channel); got != tc.want {
			name := "<nil>"
			if tc.who != nil {
				name = tc.who.Login
			}
			t.Errorf("%s.May(%q) = %+v, want %+v", name, tc.channel, got, tc.want)
		}
	}
}

func TestTrusted(t *testing.T) {
	d := testDirectory(t)
	for _, tc := range []struct {
		addr string
		want string
	}{
		{"10.0.0.1", "crm"},
		{"10.1.2.200", "billing-app"},
		{"10.1.3.1", "crm"},
		{"::ffff:10.1.2.5", "billing-app"}, // IPv4-mapped from a dual-stack socket
		{"2001:db8:1::5", "crm6"},
		{"11.0.0.1", ""},
		{"127.0.0.1", ""},
		{"::1", ""},
	} {
		p, ok := d.Trusted(netip.MustParseAddr(tc.addr))
		switch {
		case tc.want == "" && ok:
			t.Errorf("Trusted(%s) = %s, want none", tc.addr, p.Login)
		case tc.want != "" && (!ok || p.Login != tc.want || !p.Service):
			t.Errorf("Trusted(%s) = %+v, %v; want service %s", tc.addr, p, ok, tc.want)
		}
	}
}

func TestNewDirectoryReportsEveryProblem(t *testing.T) {
	_, err := NewDirectory(
		[]User{
			{Login: "a", PasswordHash: "plain-text", Role: "agent"},
			{Login: "A", PasswordHash: hash(t, "x"), Role: "agent"},
			{Login: "", Role: "agent"},
			{Login: "c", PasswordHash: hash(t, "x"), Role: "ghost"},
		},
		[]Role{
			{Name: "agent"},
			{Name: "agent"},
			{Name: "odd", Channels: map[string]Permission{"X": {Outbound: true}}},
		},
		[]TrustedNetwork{
			{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Principal: "x", Role: "agent"},
			{Prefix: netip.MustParsePrefix("10.0.0.1/8"), Principal: "y", Role: "agent"},
			{Principal: "z", Role: "agent"},
			{Prefix: netip.MustParsePrefix("192.168.0.0/16"), Role: "nope"},
		},
	)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`users[0] (a): password hash is not a bcrypt hash`,
		`users[1]: duplicate login "a"`,
		`users[2]: login is empty`,
		`users[3] (c): unknown role "ghost"`,
		`roles[1]: duplicate role "agent"`,
		`roles[2] (odd): channel "X": outbound requires reply`,
		`trusted_networks[1]: duplicate prefix 10.0.0.0/8`,
		`trusted_networks[2]: invalid prefix`,
		`trusted_networks[3]: principal is empty`,
		`trusted_networks[3] (192.168.0.0/16): unknown role "nope"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "plain-text") {
		t.Error("error leaks a password hash")
	}
}

// The unknown-login path must cost a bcrypt comparison of the same cost as a real user: the dummy hash
// is generated at the highest cost in use.
func TestDummyHashCost(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.DefaultCost+1)
	d, err := NewDirectory([]User{{Login: "u", PasswordHash: string(h), Role: "r"}}, []Role{{Name: "r"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := bcrypt.Cost(d.dummyHash); c != bcrypt.DefaultCost+1 {
		t.Fatalf("dummy hash cost %d, want %d", c, bcrypt.DefaultCost+1)
	}
	if _, err := d.Authenticate("nobody", "pw"); !errors.Is(err, ErrBadCredentials) {
		t.Fatal(err)
	}
}

// fail makes one failed password check of login from addr, or reports that the limiter refused it.
func fail(l *Limiter, addr netip.Addr, login string) bool {
	a, _, ok := l.Begin(context.Background(), addr, login)
	if ok {
		a.Failed()
	}
	return ok
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := NewLimiter(LimiterOptions{MaxFailures: 3, MaxClientFailures: 5, Window: time.Minute, MaxClients: 16,
		Now: func() time.Time { return now }})
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	for i := 0; i < 3; i++ {
		if !fail(l, a, "anna") {
			t.Fatalf("refused after %d failures", i)
		}
	}
	if _, retry, ok := l.Begin(context.Background(), a, "ANNA"); ok || retry != time.Minute {
		t.Fatalf("4th check of anna: ok %v retry %v, want refused for 1m", ok, retry)
	}
	// Another agent behind the same client is not locked out by anna's failures ...
	if !fail(l, a, "bert") || !fail(l, a, "carl") {
		t.Fatal("another login from the same client is locked out")
	}
	// ... up to the client's ceiling (5 failures over all logins).
	if _, _, ok := l.Begin(context.Background(), a, "dora"); ok {
		t.Fatal("client ceiling not enforced")
	}
	if retry, ok := l.Allow(a); ok || retry != time.Minute {
		t.Fatalf("Allow over the ceiling: ok %v retry %v", ok, retry)
	}
	if _, ok := l.Allow(b); !ok || !fail(l, b, "anna") {
		t.Fatal("another client is limited too")
	}
	if _, ok := l.Allow(netip.MustParseAddr("::ffff:192.0.2.1")); ok {
		t.Fatal("IPv4-mapped form of a limited client is allowed")
	}
	now = now.Add(45 * time.Second)
	if retry, ok := l.Allow(a); ok || retry != 15*time.Second {
		t.Fatalf("before the window passed: ok %v retry %v", ok, retry)
	}
	now = now.Add(15 * time.Second)
	if _, ok := l.Allow(a); !ok || !fail(l, a, "anna") {
		t.Fatal("still refused after the window")
	}

	// IPv6: one /64 is one client.
	x := netip.MustParseAddr("2001:db8:1:2::1")
	for i := 0; i < 3; i++ {
		fail(l, netip.MustParseAddr("2001:db8:1:2::"+string(rune('a'+i))), "anna")
	}
	if _, _, ok := l.Begin(context.Background(), x, "anna"); ok {
		t.Fatal("rotating addresses inside a /64 escaped the limit")
	}
	if _, _, ok := l.Begin(context.Background(), netip.MustParseAddr("2001:db8:1:3::1"), "anna"); !ok {
		t.Fatal("the neighbouring /64 is limited")
	}
}

// Checks in flight count: of 100 attempts at once, 5 are checked; the others wait for them, and are
// refused when those failed, or go ahead when they succeeded (parallel logins of one account).
func TestLimiterInFlight(t *testing.T) {
	for _, succeed := range []bool{false, true} {
		l := NewLimiter(LimiterOptions{MaxFailures: 5, MaxClientFailures: 20})
		a := netip.MustParseAddr("192.0.2.1")
		var inFlight, most, checks, refused atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < 100; i++ {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				at, _, ok := l.Begin(ctx, a, "anna")
				if !ok {
					refused.Add(1)
					return
				}
				checks.Add(1)
				n := inFlight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(time.Millisecond) // the password check
				inFlight.Add(-1)
				if succeed {
					at.Succeeded()
				} else {
					at.Failed()
				}
			})
		}
		wg.Wait()
		if most.Load() > 5 {
			t.Errorf("succeed=%v: %d checks in flight at once, limit 5", succeed, most.Load())
		}
		if !succeed && (checks.Load() != 5 || refused.Load() != 95) {
			t.Errorf("failing: %d checks, %d refused; want 5 and 95", checks.Load(), refused.Load())
		}
		if succeed && checks.Load() != 100 {
			t.Errorf("succeeding: %d of 100 checked, %d refused", checks.Load(), refused.Load())
		}
	}
	// A waiter gives up with its context.
	l := NewLimiter(LimiterOptions{MaxFailures: 1})
	a := netip.MustParseAddr("192.0.2.1")
	held, _, _ := l.Begin(context.Background(), a, "anna")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, ok := l.Begin(ctx, a, "anna"); ok {
		t.Fatal("granted while the only check is in flight")
	}
	held.Succeeded()
}

func TestLimiterBoundedMemory(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := NewLimiter(LimiterOptions{MaxFailures: 2, Window: time.Minute, MaxClients: 100, Now: func() time.Time { return now }})
	first := netip.MustParseAddr("198.51.100.1")
	fail(l, first, "x")
	fail(l, first, "x")
	addr := netip.MustParseAddr("10.0.0.0")
	for i := 0; i < 10_000; i++ {
		addr = addr.Next()
		fail(l, addr, strings.Repeat("y", i%3000))
		if n := l.Len(); n > 100 {
			t.Fatalf("tracking %d counters, limit 100", n)
		}
	}
	if !fail(l, first, "x") {
		t.Fatal("oldest window was not the one evicted")
	}
	fail(l, addr, strings.Repeat("y", 9999%3000)) // the newest client is still tracked: its second failure reaches the limit
	if _, _, ok := l.Begin(context.Background(), addr, strings.Repeat("y", 9999%3000)); ok {
		t.Fatal("newest client was evicted")
	}
	// Windows end: everything expires.
	now = now.Add(time.Minute)
	l.Allow(first)
	if n := l.Len(); n != 0 {
		t.Fatalf("%d windows left after expiry", n)
	}
}

func checker(calls *[]string, ok bool) CheckFunc {
	return func(login, password string) error {
		*calls = append(*calls, login+":"+password)
		if !ok {
			return ErrBadCredentials
		}
		return nil
	}
}

func TestLoginServer(t *testing.T) {
	var calls []string
	s := NewLoginServer(checker(&calls, true))
	ch, done, err := s.Next(nil)
	if string(ch) != "Username:" || done || err != nil {
		t.Fatalf("first step: %q %v %v", ch, done, err)
	}
	ch, done, err = s.Next([]byte("alice"))
	if string(ch) != "Password:" || done || err != nil {
		t.Fatalf("second step: %q %v %v", ch, done, err)
	}
	ch, done, err = s.Next([]byte("s3cret"))
	if ch != nil || !done || err != nil {
		t.Fatalf("third step: %q %v %v", ch, done, err)
	}
	if len(calls) != 1 || calls[0] != "alice:s3cret" {
		t.Fatalf("checks %q", calls)
	}
	if _, _, err := s.Next([]byte("more")); !errors.Is(err, ErrLoginProtocol) {
		t.Fatalf("response after done: %v", err)
	}

	// Initial response carries the username; a failing check is returned unchanged.
	calls = nil
	s = NewLoginServer(checker(&calls, false))
	if ch, _, _ := s.Next([]byte("bob")); string(ch) != "Password:" {
		t.Fatalf("after initial response: %q", ch)
	}
	if _, done, err := s.Next([]byte("pw")); !done || !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("bad password: %v %v", done, err)
	}
	if len(calls) != 1 || calls[0] != "bob:pw" {
		t.Fatalf("checks %q", calls)
	}
}

// go-sasl's LOGIN client must complete against our server (it is what relay/deliver uses upstream).
func TestLoginServerWithGoSASLClient(t *testing.T) {
	var calls []string
	srv, _ := NewServer(MechLogin, checker(&calls, true))
	c := sasl.NewLoginClient("alice", "s3cret")
	_, ir, err := c.Start()
	if err != nil {
		t.Fatal(err)
	}
	ch, done, err := srv.Next(ir)
	for !done && err == nil {
		var resp []byte
		if resp, err = c.Next(ch); err != nil {
			t.Fatal(err)
		}
		ch, done, err = srv.Next(resp)
	}
	if err != nil || len(calls) != 1 || calls[0] != "alice:s3cret" {
		t.Fatalf("err %v, calls %q", err, calls)
	}
}

func TestPlainServer(t *testing.T) {
	for _, tc := range []struct {
		resp    string
		wantErr error
		call    string
	}{
		{"\x00alice\x00s3cret", nil, "alice:s3cret"},
		{"alice\x00alice\x00s3cret", nil, "alice:s3cret"},
		{"bob\x00alice\x00s3cret", ErrAuthzid, ""}, // check never runs: it may record a login
		{"alice\x00s3cret", errors.New("any"), ""},
	} {
		var calls []string
		s, ok := NewServer(MechPlain, checker(&calls, true))
		if !ok {
			t.Fatal("no PLAIN")
		}
		_, done, err := s.Next([]byte(tc.resp))
		if !done && err == nil {
			t.Fatalf("%q: not done", tc.resp)
		}
		if (err == nil) != (tc.wantErr == nil) || (tc.wantErr == ErrAuthzid && !errors.Is(err, ErrAuthzid)) {
			t.Errorf("%q: err %v, want %v", tc.resp, err, tc.wantErr)
		}
		if got := strings.Join(calls, ","); got != tc.call {
			t.Errorf("%q: checks %q, want %q", tc.resp, got, tc.call)
		}
	}
	if _, ok := NewServer("CRAM-MD5", nil); ok {
		t.Fatal("unsupported mechanism offered")
	}
}

// FuzzLoginServer feeds arbitrary client responses (as go-smtp hands them over after base64 decoding):
// the server must never panic, must call the check at most once, exactly with the two responses it
// asked for, and must end the exchange after at most three steps.
func FuzzLoginServer(f *testing.F) {
	f.Add(true, []byte("alice"), []byte("s3cret"), []byte("extra"))
	f.Add(false, []byte(""), []byte("pw"), []byte(nil))
	f.Add(true, []byte("\x00\xff"), []byte(strings.Repeat("A", 3000)), []byte("*"))
	f.Fuzz(func(t *testing.T, initial bool, a, b, c []byte) {
		// go-smtp never hands over nil after a 334: an empty line decodes to an empty slice.
		a, b, c = append([]byte{}, a...), append([]byte{}, b...), append([]byte{}, c...)
		var calls []string
		s := NewLoginServer(checker(&calls, true))
		steps := [][]byte{a, b, c, c, c}
		if !initial {
			steps = append([][]byte{nil}, steps...)
		}
		doneAt := -1
		for i, resp := range steps {
			_, done, err := s.Next(resp)
			if done || err != nil {
				doneAt = i
				break
			}
		}
		if doneAt < 0 || doneAt > 2 {
			t.Fatalf("exchange not finished after %d steps", doneAt)
		}
		user, pass := steps[doneAt-1], steps[doneAt]
		if len(calls) != 1 || calls[0] != string(user)+":"+string(pass) {
			t.Fatalf("checks %q, want one with %q:%q", calls, user, pass)
		}
		if _, done, err := s.Next(c); !done || err == nil {
			t.Fatal("accepted a response after the end")
		}
	})
}
