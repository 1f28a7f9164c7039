package igbutton_test

import (
	"errors"
	"regexp"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/igbutton/igbutton/clients/go/igbutton"
	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

func TestButtons(t *testing.T) {
	tpl := igbutton.Template("Pick one",
		igbutton.UrlButton("Visit", "https://example.com"),
		igbutton.PostbackButton("Yes", "ANSWER_YES"))
	if got := tpl.GetButtons()[0].GetUrl().GetUrl(); got != "https://example.com" {
		t.Errorf("url button url = %q", got)
	}
	if got := tpl.GetButtons()[1].GetPostback().GetPayload(); got != "ANSWER_YES" {
		t.Errorf("postback button payload = %q", got)
	}
}

func TestNewRequestIDIsAUUIDv4(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, b := igbutton.NewRequestID(), igbutton.NewRequestID()
	if !uuid.MatchString(a) || a == b {
		t.Fatalf("request ids %q, %q", a, b)
	}
}

func TestDetailsDecodesAIP193(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "slow down").WithDetails(
		&errdetails.ErrorInfo{Reason: "RATE_LIMITED", Domain: "igbutton", Metadata: map[string]string{"graphCode": "4"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "template.buttons[1].title", Description: "at most 20 characters"},
		}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := igbutton.Details(st.Err())
	if !ok {
		t.Fatal("not decoded")
	}
	if d.Code != codes.ResourceExhausted || d.Reason != "RATE_LIMITED" || d.Metadata["graphCode"] != "4" {
		t.Errorf("decoded %+v", d)
	}
	if len(d.Violations) != 1 || d.Violations[0].Field != "template.buttons[1].title" {
		t.Errorf("violations %+v", d.Violations)
	}
	if !d.HasRetryDelay || d.RetryDelay != 1500*time.Millisecond {
		t.Errorf("retry delay %v %v", d.HasRetryDelay, d.RetryDelay)
	}
	if igbutton.Reason(st.Err()) != igbuttonv1.ErrorReason_ERROR_REASON_RATE_LIMITED {
		t.Errorf("reason %v", igbutton.Reason(st.Err()))
	}
}

func TestDetailsOfOtherErrors(t *testing.T) {
	if _, ok := igbutton.Details(nil); ok {
		t.Error("nil decoded")
	}
	if _, ok := igbutton.Details(errors.New("plain")); ok {
		t.Error("plain error decoded")
	}
	if r := igbutton.Reason(status.Error(codes.Internal, "boom")); r != igbuttonv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("reason of a bare status = %v", r)
	}
}
