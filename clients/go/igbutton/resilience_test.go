package igbutton_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/igbutton/igbutton/clients/go/igbutton"
	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// harnessEnv is what tests/clients/harness.py provides besides igbutton:
// a proxy that loses one answer on request, and a control API.
func harnessEnv(t *testing.T) (addr, flakyAddr, sandboxURL, controlURL string) {
	t.Helper()
	addr, sandboxURL = os.Getenv("IGBUTTON_ADDR"), os.Getenv("IGBUTTON_SANDBOX_URL")
	flakyAddr, controlURL = os.Getenv("IGBUTTON_FLAKY_ADDR"), os.Getenv("IGBUTTON_CONTROL_URL")
	if addr == "" || sandboxURL == "" || flakyAddr == "" || controlURL == "" {
		t.Skip("IGBUTTON_ADDR, IGBUTTON_SANDBOX_URL, IGBUTTON_FLAKY_ADDR and IGBUTTON_CONTROL_URL are not set (tests/clients/test_roundtrip.py sets them)")
	}
	return addr, flakyAddr, sandboxURL, controlURL
}

// TestRetryAfterUnavailable: igbutton sends the message, then the connection
// is lost before its answer arrives (UNAVAILABLE). The default service config
// retries; the retry carries the request_id the client set, so igbutton
// answers from its idempotency record and Instagram (the sandbox) receives
// the message once.
func TestRetryAfterUnavailable(t *testing.T) {
	_, flakyAddr, sandboxURL, controlURL := harnessEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := igbutton.Dial(flakyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	control(ctx, t, controlURL, http.MethodPost, "/drop-next-answer", nil)
	text := "Go retry " + igbutton.NewRequestID()
	// No RequestId: the client must set one itself, or the retry would send twice.
	sent, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{
		RecipientId: recipient,
		Template:    igbutton.Template(text, igbutton.PostbackButton("Yes", "go-retry")),
	})
	if err != nil {
		d, _ := igbutton.Details(err)
		t.Fatalf("SendButtonTemplate after one lost answer: %v (%v)", err, d)
	}
	var drops struct{ Dropped int }
	control(ctx, t, controlURL, http.MethodGet, "/drops", &drops)
	if drops.Dropped < 1 {
		t.Fatalf("the proxy dropped no answer (%d): the test injected nothing", drops.Dropped)
	}
	ids := acceptedWithText(ctx, t, sandboxURL, text)
	if len(ids) != 1 || ids[0] != sent.GetMessageId() {
		t.Fatalf("the sandbox accepted %v for %q, want exactly [%s]", ids, text, sent.GetMessageId())
	}
}

// TestResumeAfterRestart: a subscription receives one postback, igbutton is
// stopped and a new process started on the same port and SQLite file, two
// more postbacks are stored before the subscription reads again; it must
// reconnect and deliver exactly those two, in order.
func TestResumeAfterRestart(t *testing.T) {
	addr, _, sandboxURL, controlURL := harnessEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	client, err := igbutton.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	prefix := "go-resume-" + igbutton.NewRequestID()
	disconnects := 0
	sub := client.Subscribe(ctx, &igbuttonv1.SubscribePostbacksRequest{
		PayloadPrefix: prefix,
		Start:         &igbuttonv1.SubscribePostbacksRequest_Position{Position: igbuttonv1.StartPosition_START_POSITION_EARLIEST},
	}, igbutton.WithOnDisconnect(func(error, time.Duration) { disconnects++ }))
	defer sub.Close()

	sendAndTap(ctx, t, client, sandboxURL, prefix+"-1")
	first := recvPayload(t, sub)
	if first.GetPayload() != prefix+"-1" {
		t.Fatalf("first postback %q, want %q", first.GetPayload(), prefix+"-1")
	}

	control(ctx, t, controlURL, http.MethodPost, "/restart", nil)
	// Stored while the subscription is disconnected: a resume from "latest"
	// would lose them, one from the start would repeat the first.
	sendAndTap(ctx, t, client, sandboxURL, prefix+"-2")
	sendAndTap(ctx, t, client, sandboxURL, prefix+"-3")

	previous := first.GetSequence()
	for _, want := range []string{prefix + "-2", prefix + "-3"} {
		got := recvPayload(t, sub)
		if got.GetPayload() != want || got.GetSequence() <= previous {
			t.Fatalf("after the restart got %q (sequence %d after %d), want %q", got.GetPayload(), got.GetSequence(), previous, want)
		}
		previous = got.GetSequence()
	}
	if disconnects == 0 {
		t.Fatal("the subscription never saw the restart")
	}
	if last, ok := sub.LastSequence(); !ok || last != previous {
		t.Fatalf("LastSequence() = %d, %v; want %d", last, ok, previous)
	}
}

func recvPayload(t *testing.T, sub *igbutton.Subscription) *igbuttonv1.Postback {
	t.Helper()
	event, err := sub.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return event.GetPostback()
}

func sendAndTap(ctx context.Context, t *testing.T, client *igbutton.Client, sandboxURL, payload string) {
	t.Helper()
	sent, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{
		RecipientId: recipient,
		Template:    igbutton.Template("Resume from Go", igbutton.PostbackButton("Yes", payload)),
	})
	if err != nil {
		d, _ := igbutton.Details(err)
		t.Fatalf("SendButtonTemplate: %v (%v)", err, d)
	}
	if got := tap(ctx, t, sandboxURL, sent.GetMessageId(), 0); got.WebhookStatus != http.StatusOK {
		t.Fatalf("tap delivered the webhook with HTTP %d", got.WebhookStatus)
	}
}

// acceptedWithText lists the ids of the messages the sandbox accepted whose
// template text is text.
func acceptedWithText(ctx context.Context, t *testing.T, sandboxURL, text string) []string {
	t.Helper()
	var listing struct {
		Messages []struct {
			MessageID string          `json:"message_id"`
			Accepted  bool            `json:"accepted"`
			Body      json.RawMessage `json:"body"`
		} `json:"messages"`
	}
	get(ctx, t, strings.TrimRight(sandboxURL, "/")+"/_sandbox/messages", &listing)
	var ids []string
	for _, m := range listing.Messages {
		if m.Accepted && strings.Contains(string(m.Body), text) {
			ids = append(ids, m.MessageID)
		}
	}
	return ids
}

func control(ctx context.Context, t *testing.T, controlURL, method, path string, into any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(controlURL, "/")+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	do(t, req, into)
}

func get(ctx context.Context, t *testing.T, url string, into any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	do(t, req, into)
}

func do(t *testing.T, req *http.Request, into any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: HTTP %d: %s", req.Method, req.URL, resp.StatusCode, raw)
	}
	if into != nil {
		if err := json.Unmarshal(raw, into); err != nil {
			t.Fatalf("%s %s answered %s: %v", req.Method, req.URL, raw, err)
		}
	}
}
