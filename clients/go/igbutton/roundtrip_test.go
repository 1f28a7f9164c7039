package igbutton_test

import (
	"bytes"
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

// recipient is an IGSID the sandbox accepts.
const recipient = "1254477777772919"

// TestRoundTrip sends a template through a running igbutton (started with
// --sandbox), has the sandbox tap its postback button and expects the
// postback on a subscription. tests/clients/test_roundtrip.py runs it with
// IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL set; without them it is skipped.
func TestRoundTrip(t *testing.T) {
	addr, sandboxURL := os.Getenv("IGBUTTON_ADDR"), os.Getenv("IGBUTTON_SANDBOX_URL")
	if addr == "" || sandboxURL == "" {
		t.Skip("IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL are not set (point them at `igbutton-server --sandbox`)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	client, err := igbutton.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	payload := "go-roundtrip-" + igbutton.NewRequestID()
	// Subscribed before the tap; the unique payload as prefix plus EARLIEST
	// make the test independent of when the server registers the stream.
	stream, err := client.Postbacks.SubscribePostbacks(ctx, &igbuttonv1.SubscribePostbacksRequest{
		PayloadPrefix: payload,
		Start:         &igbuttonv1.SubscribePostbacksRequest_Position{Position: igbuttonv1.StartPosition_START_POSITION_EARLIEST},
	})
	if err != nil {
		t.Fatalf("SubscribePostbacks: %v", err)
	}

	sent, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{
		RecipientId: recipient,
		RequestId:   igbutton.NewRequestID(),
		Template: igbutton.Template("Round trip from Go",
			igbutton.PostbackButton("Yes", payload),
			igbutton.UrlButton("Docs", "https://example.com/docs")),
	})
	if err != nil {
		d, _ := igbutton.Details(err)
		t.Fatalf("SendButtonTemplate: %v (%v)", err, d)
	}
	if sent.GetMessageId() == "" {
		t.Fatal("SendButtonTemplate returned no message_id")
	}

	tapped := tap(ctx, t, sandboxURL, sent.GetMessageId(), 0)
	if tapped.Payload != payload {
		t.Fatalf("sandbox tapped payload %q, want %q", tapped.Payload, payload)
	}

	event, err := stream.Recv()
	if err != nil {
		t.Fatalf("receiving the postback: %v", err)
	}
	if got := event.GetPostback().GetPayload(); got != payload {
		t.Fatalf("postback payload %q, want %q", got, payload)
	}
	if got := event.GetPostback().GetTitle(); got != "Yes" {
		t.Errorf("postback title %q, want %q", got, "Yes")
	}
	if event.GetPostback().GetSequence() == 0 {
		t.Error("postback has no sequence number")
	}

	// The one configured account (the sandbox's), its token status included.
	got, err := client.Accounts.GetAccount(ctx, &igbuttonv1.GetAccountRequest{})
	if err != nil {
		t.Fatalf("GetAccount: %v", err)
	}
	if got.GetAccount().GetId() == "" {
		t.Error("GetAccount returned no account id")
	}
	if s := got.GetAccount().GetTokenStatus(); s != igbuttonv1.TokenStatus_TOKEN_STATUS_OK {
		t.Errorf("token status %v, want TOKEN_STATUS_OK", s)
	}
}

// TestGroupRoundTrip dead-letters a postback in a consumer group (nacked on
// every attempt), reads the group with GetGroup and redrives it: it comes
// back with its sequence and delivery attempt 1.
func TestGroupRoundTrip(t *testing.T) {
	addr, sandboxURL := os.Getenv("IGBUTTON_ADDR"), os.Getenv("IGBUTTON_SANDBOX_URL")
	if addr == "" || sandboxURL == "" {
		t.Skip("IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL are not set (point them at `igbutton-server --sandbox`)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := igbutton.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	id := igbutton.NewRequestID()
	group, payload := "go-"+id[:8], "go-group-"+id
	stream, err := client.Postbacks.SubscribePostbacks(ctx, &igbuttonv1.SubscribePostbacksRequest{
		PayloadPrefix: payload,
		Group:         group,
		Start:         &igbuttonv1.SubscribePostbacksRequest_Position{Position: igbuttonv1.StartPosition_START_POSITION_EARLIEST},
	})
	if err != nil {
		t.Fatalf("SubscribePostbacks: %v", err)
	}
	sent, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{
		RecipientId: recipient,
		RequestId:   igbutton.NewRequestID(),
		Template:    igbutton.Template("Group round trip from Go", igbutton.PostbackButton("Yes", payload)),
	})
	if err != nil {
		t.Fatalf("SendButtonTemplate: %v", err)
	}
	tap(ctx, t, sandboxURL, sent.GetMessageId(), 0)

	var sequence uint64
	for attempt := uint32(1); ; attempt++ {
		event, err := stream.Recv()
		if err != nil {
			t.Fatalf("receiving attempt %d: %v", attempt, err)
		}
		if event.GetDeliveryAttempt() != attempt {
			t.Fatalf("delivery attempt %d, want %d", event.GetDeliveryAttempt(), attempt)
		}
		sequence = event.GetPostback().GetSequence()
		if _, err := client.Postbacks.AckPostbacks(ctx, &igbuttonv1.AckPostbacksRequest{Group: group, NackIds: []string{event.GetAckId()}}); err != nil {
			t.Fatalf("AckPostbacks: %v", err)
		}
		info, err := client.GetGroup(ctx, group)
		if err != nil {
			t.Fatalf("GetGroup: %v", err)
		}
		if info.GetDeadLetterCount() == 1 {
			if attempt != info.GetMaxDeliveryAttempts() {
				t.Fatalf("dead-lettered after %d attempts, max is %d", attempt, info.GetMaxDeliveryAttempts())
			}
			break
		}
	}

	redriven, err := client.RedriveDeadLetters(ctx, group, sequence)
	if err != nil || redriven != 1 {
		t.Fatalf("RedriveDeadLetters: %d, %v", redriven, err)
	}
	again, err := stream.Recv()
	if err != nil {
		t.Fatalf("receiving the redriven postback: %v", err)
	}
	if again.GetPostback().GetSequence() != sequence || again.GetDeliveryAttempt() != 1 {
		t.Fatalf("redriven: sequence %d attempt %d, want %d and 1",
			again.GetPostback().GetSequence(), again.GetDeliveryAttempt(), sequence)
	}
	if _, err := client.Postbacks.AckPostbacks(ctx, &igbuttonv1.AckPostbacksRequest{Group: group, AckIds: []string{again.GetAckId()}}); err != nil {
		t.Fatalf("AckPostbacks: %v", err)
	}
}

type tapResult struct {
	Mid           string `json:"mid"`
	Payload       string `json:"payload"`
	Title         string `json:"title"`
	WebhookStatus int    `json:"webhook_status"`
}

// tap asks the sandbox to tap a button of a message it recorded.
func tap(ctx context.Context, t *testing.T, sandboxURL, messageID string, index int) tapResult {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"message_id": messageID, "button_index": index})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		strings.TrimRight(sandboxURL, "/")+"/_sandbox/tap", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("sandbox tap: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sandbox tap: HTTP %d: %s", resp.StatusCode, raw)
	}
	var result tapResult
	if err := json.Unmarshal(raw, &result); err != nil {
		t.Fatalf("sandbox tap answered %s: %v", raw, err)
	}
	return result
}
