package igbutton

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// SubscribeOption configures Subscribe.
type SubscribeOption func(*subscribeConfig)

type subscribeConfig struct {
	initialBackoff time.Duration
	maxBackoff     time.Duration
	maxReconnects  int
	onDisconnect   func(err error, delay time.Duration)
}

// WithReconnectBackoff sets the bounds of the delay before a reconnect: the
// n-th consecutive one waits a random time between half and all of
// min(max, initial*2^(n-1)). Defaults: 200 ms and 10 s, as the Python client.
func WithReconnectBackoff(initial, max time.Duration) SubscribeOption {
	return func(c *subscribeConfig) { c.initialBackoff, c.maxBackoff = initial, max }
}

// WithMaxReconnects gives up after n consecutive failed streams (Recv then
// returns the last error); 0, the default, reconnects forever.
func WithMaxReconnects(n int) SubscribeOption {
	return func(c *subscribeConfig) { c.maxReconnects = n }
}

// WithOnDisconnect calls f with the error and the delay before the next
// attempt each time a stream is lost and will be reopened.
func WithOnDisconnect(f func(err error, delay time.Duration)) SubscribeOption {
	return func(c *subscribeConfig) { c.onDisconnect = f }
}

// Subscription is a SubscribePostbacks stream that reconnects after
// UNAVAILABLE (a server restart or a lost connection) or a CANCELED it did
// not cause (igbutton cancels calls it has no room for), with growing delays,
// and resumes where it left off:
//
//   - a broadcast subscription resumes with after_sequence set to the last
//     sequence Recv returned, so nothing is lost and nothing repeats (an
//     event at or below it is dropped should the server send it again); if
//     nothing was received yet and it started at LATEST, it resumes from the
//     time it first subscribed;
//   - a group subscription rejoins the group, which keeps its own position;
//     unacknowledged postbacks come again after their ack deadline.
//
// Other errors, the context's end and a stream the server ends cleanly end
// the subscription: Recv returns that error (io.EOF for a clean end) from
// then on. A Subscription is for one goroutine; Close may be called from any.
type Subscription struct {
	ctx    context.Context
	cancel context.CancelFunc
	open   func(context.Context, *igbuttonv1.SubscribePostbacksRequest) (igbuttonv1.PostbackService_SubscribePostbacksClient, error)
	cfg    subscribeConfig
	base   *igbuttonv1.SubscribePostbacksRequest

	stream    igbuttonv1.PostbackService_SubscribePostbacksClient
	streamEnd context.CancelFunc
	connected bool
	since     *timestamppb.Timestamp
	last      uint64
	hasLast   bool
	failures  int
	err       error
	mu        sync.Mutex // guards last and hasLast, read by LastSequence
}

// Subscribe opens a resuming subscription with req (its filters, start and
// group); the first Recv connects. Cancel ctx or call Close to end it.
func (c *Client) Subscribe(ctx context.Context, req *igbuttonv1.SubscribePostbacksRequest, opts ...SubscribeOption) *Subscription {
	cfg := subscribeConfig{initialBackoff: 200 * time.Millisecond, maxBackoff: 10 * time.Second}
	for _, opt := range opts {
		opt(&cfg)
	}
	ctx, cancel := context.WithCancel(ctx)
	open := func(ctx context.Context, r *igbuttonv1.SubscribePostbacksRequest) (igbuttonv1.PostbackService_SubscribePostbacksClient, error) {
		return c.Postbacks.SubscribePostbacks(ctx, r)
	}
	return &Subscription{ctx: ctx, cancel: cancel, open: open, cfg: cfg, base: proto.Clone(req).(*igbuttonv1.SubscribePostbacksRequest)}
}

// Recv returns the next postback, reconnecting and resuming as needed.
func (s *Subscription) Recv() (*igbuttonv1.SubscribePostbacksResponse, error) {
	for {
		if s.err != nil {
			return nil, s.err
		}
		if s.stream == nil {
			if err := s.connect(); err != nil {
				if retry := s.lost(err); retry != nil {
					return nil, retry
				}
				continue
			}
		}
		event, err := s.stream.Recv()
		if err != nil {
			s.dropStream()
			if retry := s.lost(err); retry != nil {
				return nil, retry
			}
			continue
		}
		s.failures = 0
		if s.base.GetGroup() == "" {
			seq := event.GetPostback().GetSequence()
			s.mu.Lock()
			repeat := s.hasLast && seq <= s.last
			if !repeat {
				s.last, s.hasLast = seq, true
			}
			s.mu.Unlock()
			if repeat {
				continue // already returned before the reconnect
			}
		}
		return event, nil
	}
}

// LastSequence is the sequence of the last postback Recv returned (broadcast
// only); ok is false before the first.
func (s *Subscription) LastSequence() (seq uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.hasLast
}

// Close ends the subscription; a Recv blocked in another goroutine returns.
func (s *Subscription) Close() { s.cancel() }

func (s *Subscription) connect() error {
	ctx, end := context.WithCancel(s.ctx)
	stream, err := s.open(ctx, s.nextRequest())
	if err != nil {
		end()
		return err
	}
	s.stream, s.streamEnd = stream, end
	return nil
}

func (s *Subscription) dropStream() {
	s.streamEnd()
	s.stream, s.streamEnd = nil, nil
}

// nextRequest is the request for the first connection or for a resume.
func (s *Subscription) nextRequest() *igbuttonv1.SubscribePostbacksRequest {
	req := proto.Clone(s.base).(*igbuttonv1.SubscribePostbacksRequest)
	if !s.connected {
		s.connected = true
		if req.GetGroup() == "" && startsLatest(req) {
			s.since = timestamppb.Now()
		}
		return req
	}
	if req.GetGroup() != "" {
		return req
	}
	if last, ok := s.LastSequence(); ok {
		req.Start = &igbuttonv1.SubscribePostbacksRequest_AfterSequence{AfterSequence: last}
	} else if s.since != nil {
		req.Start = &igbuttonv1.SubscribePostbacksRequest_SinceTime{SinceTime: s.since}
	}
	return req
}

func startsLatest(req *igbuttonv1.SubscribePostbacksRequest) bool {
	switch start := req.GetStart().(type) {
	case nil:
		return true
	case *igbuttonv1.SubscribePostbacksRequest_Position:
		return start.Position != igbuttonv1.StartPosition_START_POSITION_EARLIEST
	default:
		return false
	}
}

// lost decides after a failed stream: nil to reconnect (after the delay,
// already waited), or the error that ends the subscription.
func (s *Subscription) lost(err error) error {
	if s.ctx.Err() != nil {
		return s.end(status.FromContextError(s.ctx.Err()).Err())
	}
	if errors.Is(err, io.EOF) {
		return s.end(io.EOF)
	}
	s.failures++
	code := status.Code(err)
	if (code != codes.Unavailable && code != codes.Canceled) ||
		(s.cfg.maxReconnects > 0 && s.failures > s.cfg.maxReconnects) {
		return s.end(err)
	}
	delay := s.delay()
	if s.cfg.onDisconnect != nil {
		s.cfg.onDisconnect(err, delay)
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-s.ctx.Done():
		return s.end(status.FromContextError(s.ctx.Err()).Err())
	}
}

func (s *Subscription) end(err error) error {
	s.err = err
	s.cancel()
	return err
}

// delay is a random time between half and all of the current bound (jitter,
// so that subscribers reconnecting after one restart spread out).
func (s *Subscription) delay() time.Duration {
	bound := s.cfg.initialBackoff
	for i := 1; i < s.failures && bound < s.cfg.maxBackoff; i++ {
		bound *= 2
	}
	bound = min(bound, s.cfg.maxBackoff)
	if bound <= 0 {
		return 0
	}
	return bound/2 + rand.N(bound/2+1)
}
