package igbutton_test

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/igbutton/igbutton/clients/go/igbutton"
	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// scriptedPostbacks answers the n-th SubscribePostbacks with script[n]'s
// sequences, then ends that stream with script[n]'s code, and records every
// request it was sent.
type scriptedPostbacks struct {
	igbuttonv1.UnimplementedPostbackServiceServer
	script []streamScript
	mu     sync.Mutex
	reqs   []*igbuttonv1.SubscribePostbacksRequest
}

type streamScript struct {
	sequences []uint64
	end       codes.Code
}

func (s *scriptedPostbacks) SubscribePostbacks(req *igbuttonv1.SubscribePostbacksRequest, stream igbuttonv1.PostbackService_SubscribePostbacksServer) error {
	s.mu.Lock()
	s.reqs = append(s.reqs, proto.Clone(req).(*igbuttonv1.SubscribePostbacksRequest))
	n := len(s.reqs) - 1
	s.mu.Unlock()
	if n >= len(s.script) {
		<-stream.Context().Done()
		return nil
	}
	for _, seq := range s.script[n].sequences {
		if err := stream.Send(&igbuttonv1.SubscribePostbacksResponse{Postback: &igbuttonv1.Postback{Sequence: seq}}); err != nil {
			return err
		}
	}
	if s.script[n].end == codes.OK {
		return nil
	}
	return status.Error(s.script[n].end, "scripted end")
}

func (s *scriptedPostbacks) requests() []*igbuttonv1.SubscribePostbacksRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*igbuttonv1.SubscribePostbacksRequest(nil), s.reqs...)
}

func servePostbacks(t *testing.T, impl igbuttonv1.PostbackServiceServer) *igbutton.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	igbuttonv1.RegisterPostbackServiceServer(srv, impl)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	client, err := igbutton.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestSubscriptionResumesAfterTheLastSequence(t *testing.T) {
	// UNAVAILABLE and a server-side CANCELED both reconnect; the repeated 6
	// (a server resending) is dropped.
	fake := &scriptedPostbacks{script: []streamScript{
		{sequences: []uint64{5, 6}, end: codes.Unavailable},
		{sequences: []uint64{6, 7}, end: codes.Canceled},
		{sequences: []uint64{8}, end: codes.PermissionDenied},
	}}
	client := servePostbacks(t, fake)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub := client.Subscribe(ctx, &igbuttonv1.SubscribePostbacksRequest{PayloadPrefix: "P"},
		igbutton.WithReconnectBackoff(time.Millisecond, 5*time.Millisecond))
	var got []uint64
	var err error
	for {
		var event *igbuttonv1.SubscribePostbacksResponse
		if event, err = sub.Recv(); err != nil {
			break
		}
		got = append(got, event.GetPostback().GetSequence())
	}
	if want := []uint64{5, 6, 7, 8}; !slices.Equal(got, want) {
		t.Fatalf("received %v, want %v", got, want)
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ended with %v, want PERMISSION_DENIED", err)
	}
	if _, again := sub.Recv(); status.Code(again) != codes.PermissionDenied {
		t.Fatalf("Recv after the end: %v", again)
	}
	reqs := fake.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d streams opened, want 3", len(reqs))
	}
	if reqs[0].GetStart() != nil || reqs[1].GetAfterSequence() != 6 || reqs[2].GetAfterSequence() != 7 {
		t.Fatalf("requests %v: want the original, then after_sequence 6, then 7", reqs)
	}
	for _, r := range reqs {
		if r.GetPayloadPrefix() != "P" {
			t.Fatalf("a resume lost the filter: %v", r)
		}
	}
}

func TestSubscriptionFromLatestResumesSinceItsStart(t *testing.T) {
	fake := &scriptedPostbacks{script: []streamScript{{end: codes.Unavailable}, {sequences: []uint64{3}, end: codes.OK}}}
	client := servePostbacks(t, fake)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := time.Now()
	sub := client.Subscribe(ctx, &igbuttonv1.SubscribePostbacksRequest{},
		igbutton.WithReconnectBackoff(time.Millisecond, 5*time.Millisecond))
	if event, err := sub.Recv(); err != nil || event.GetPostback().GetSequence() != 3 {
		t.Fatalf("Recv: %v, %v", event, err)
	}
	since := fake.requests()[1].GetSinceTime().AsTime()
	if since.Before(before.Add(-time.Second)) || since.After(time.Now()) {
		t.Fatalf("resumed since %v, want the time it first subscribed (%v)", since, before)
	}
}

func TestGroupSubscriptionRejoinsAndKeepsRepeats(t *testing.T) {
	fake := &scriptedPostbacks{script: []streamScript{
		{sequences: []uint64{4}, end: codes.Unavailable},
		{sequences: []uint64{4}, end: codes.OK}, // redelivered after its ack deadline
	}}
	client := servePostbacks(t, fake)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub := client.Subscribe(ctx, &igbuttonv1.SubscribePostbacksRequest{Group: "g"},
		igbutton.WithReconnectBackoff(time.Millisecond, 5*time.Millisecond))
	for i := range 2 {
		if event, err := sub.Recv(); err != nil || event.GetPostback().GetSequence() != 4 {
			t.Fatalf("Recv %d: %v, %v", i, event, err)
		}
	}
	for _, r := range fake.requests() {
		if r.GetGroup() != "g" || r.GetStart() != nil {
			t.Fatalf("a rejoin changed the request: %v", r)
		}
	}
}

func TestSubscriptionEndsWithItsContext(t *testing.T) {
	client := servePostbacks(t, &scriptedPostbacks{})
	ctx, cancel := context.WithCancel(context.Background())
	sub := client.Subscribe(ctx, &igbuttonv1.SubscribePostbacksRequest{})
	done := make(chan error, 1)
	go func() { _, err := sub.Recv(); done <- err }()
	cancel()
	select {
	case err := <-done:
		if status.Code(err) != codes.Canceled {
			t.Fatalf("Recv after cancel: %v, want CANCELED", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Recv still blocked 10 s after its context was cancelled")
	}
}
