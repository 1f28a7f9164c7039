package igbutton_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/igbutton/igbutton/clients/go/igbutton"
	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// flakySend answers UNAVAILABLE to the first `failures` sends and records
// the request_id of every attempt.
type flakySend struct {
	igbuttonv1.UnimplementedSendServiceServer
	mu       sync.Mutex
	failures int
	ids      []string
}

func (f *flakySend) SendButtonTemplate(_ context.Context, req *igbuttonv1.SendButtonTemplateRequest) (*igbuttonv1.SendButtonTemplateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, req.GetRequestId())
	if len(f.ids) <= f.failures {
		return nil, status.Error(codes.Unavailable, "try again")
	}
	return &igbuttonv1.SendButtonTemplateResponse{MessageId: "m1"}, nil
}

func serveSend(t *testing.T, impl igbuttonv1.SendServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	igbuttonv1.RegisterSendServiceServer(srv, impl)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestSendRetriesUnavailableWithOneRequestID(t *testing.T) {
	for _, given := range []string{"", "caller-chosen-id"} {
		fake := &flakySend{failures: 2}
		client, err := igbutton.Dial(serveSend(t, fake))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req := &igbuttonv1.SendButtonTemplateRequest{RecipientId: recipient, RequestId: given}
		_, err = client.Send.SendButtonTemplate(ctx, req)
		cancel()
		client.Close()
		if err != nil {
			t.Fatalf("request_id %q: %v", given, err)
		}
		if len(fake.ids) != 3 {
			t.Fatalf("request_id %q: %d attempts, want 3 (two UNAVAILABLE, then OK)", given, len(fake.ids))
		}
		for _, id := range fake.ids {
			if id == "" || id != fake.ids[0] || (given != "" && id != given) {
				t.Fatalf("request_id %q: attempts carried %q, want one id throughout", given, fake.ids)
			}
		}
		if req.GetRequestId() != given {
			t.Errorf("the caller's request was modified: request_id %q", req.GetRequestId())
		}
	}
}

func TestSendDoesNotRetryOtherCodes(t *testing.T) {
	fake := &flakySend{failures: 0}
	addr := serveSend(t, &failingSend{flakySend: fake, code: codes.Unknown})
	client, err := igbutton.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{}); status.Code(err) != codes.Unknown {
		t.Fatalf("got %v, want UNKNOWN", err)
	}
	if len(fake.ids) != 1 {
		t.Fatalf("%d attempts after UNKNOWN (the outcome may be unknown), want 1", len(fake.ids))
	}
}

type failingSend struct {
	*flakySend
	code codes.Code
}

func (f *failingSend) SendButtonTemplate(ctx context.Context, req *igbuttonv1.SendButtonTemplateRequest) (*igbuttonv1.SendButtonTemplateResponse, error) {
	_, _ = f.flakySend.SendButtonTemplate(ctx, req)
	return nil, status.Error(f.code, "no")
}
