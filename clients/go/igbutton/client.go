package igbutton

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// Client holds one connection to igbutton and the generated stubs of its
// services on it. It is safe for concurrent use; create one and share it.
type Client struct {
	conn *grpc.ClientConn

	// Send is the generated SendService client.
	Send igbuttonv1.SendServiceClient
	// Postbacks is the generated PostbackService client.
	Postbacks igbuttonv1.PostbackServiceClient
	// Accounts is the generated AccountService client (token status,
	// webhook subscription checks).
	Accounts igbuttonv1.AccountServiceClient
	// Groups is the generated GroupService client (admin callers).
	Groups igbuttonv1.GroupServiceClient
}

// Option configures Dial.
type Option func(*dialConfig)

type dialConfig struct {
	tls         *tls.Config
	token       string
	dialOptions []grpc.DialOption
}

// WithTLS connects over TLS with the given configuration (use a
// tls.Config with Certificates set for mutual TLS). Without it the
// connection is plaintext, which is igbutton's default listener.
func WithTLS(cfg *tls.Config) Option {
	return func(c *dialConfig) { c.tls = cfg }
}

// WithBearerToken sends "authorization: Bearer <token>" on every call, as
// igbutton expects from callers when caller authentication is configured.
// Without WithTLS the token travels in clear: use that only on a trusted
// network or loopback.
func WithBearerToken(token string) Option {
	return func(c *dialConfig) { c.token = token }
}

// WithDialOptions passes extra grpc.DialOptions (interceptors, keepalive,
// a custom resolver, ...) through to grpc.NewClient.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) { c.dialOptions = append(c.dialOptions, opts...) }
}

// Dial creates a client for the igbutton server at target ("host:port" or any
// gRPC target URI). Like grpc.NewClient it does not wait for the connection:
// the first call connects. Calls that are safe to repeat are retried after
// UNAVAILABLE as ServiceConfig says, and a send without a request_id gets one,
// so a retried send goes out at most once; use Subscribe for a postback stream
// that resumes after a server restart.
func Dial(target string, opts ...Option) (*Client, error) {
	var cfg dialConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	dialOpts := make([]grpc.DialOption, 0, len(cfg.dialOptions)+4)
	// Before the caller's options, so theirs win (a service config of their own,
	// grpc.WithDisableRetry, more interceptors chained after ours).
	dialOpts = append(dialOpts,
		grpc.WithDefaultServiceConfig(ServiceConfig),
		grpc.WithChainUnaryInterceptor(requestIDInterceptor))
	if cfg.tls != nil {
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(cfg.tls)))
	} else {
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if cfg.token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearerToken{
			token:      cfg.token,
			requireTLS: cfg.tls != nil,
		}))
	}
	dialOpts = append(dialOpts, cfg.dialOptions...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("igbutton: dial %s: %w", target, err)
	}
	return &Client{
		conn:      conn,
		Send:      igbuttonv1.NewSendServiceClient(conn),
		Postbacks: igbuttonv1.NewPostbackServiceClient(conn),
		Accounts:  igbuttonv1.NewAccountServiceClient(conn),
		Groups:    igbuttonv1.NewGroupServiceClient(conn),
	}, nil
}

// GroupName is a group's resource name: a plain name such as "billing" is
// short for "groups/billing" (open mode); names with a "/" are kept.
func GroupName(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	return "groups/" + name
}

// GetGroup returns a consumer group's configuration and state.
func (c *Client) GetGroup(ctx context.Context, name string) (*igbuttonv1.Group, error) {
	resp, err := c.Groups.GetGroup(ctx, &igbuttonv1.GetGroupRequest{Name: GroupName(name)})
	if err != nil {
		return nil, err
	}
	return resp.GetGroup(), nil
}

// RedriveDeadLetters delivers a group's dead letters with these sequences
// again from attempt 1 (none given: every dead letter) and returns how many
// were redriven.
func (c *Client) RedriveDeadLetters(ctx context.Context, name string, sequences ...uint64) (uint32, error) {
	req := &igbuttonv1.RedriveDeadLettersRequest{Name: GroupName(name), Sequences: sequences, All: len(sequences) == 0}
	resp, err := c.Groups.RedriveDeadLetters(ctx, req)
	if err != nil {
		return 0, err
	}
	return resp.GetRedrivenCount(), nil
}

// Conn returns the underlying connection, for health checks or other stubs.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; streams on it end with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// bearerToken implements credentials.PerRPCCredentials.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is true once TLS is configured, so a token given
// for a TLS connection is never sent over a plaintext one by mistake.
func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }
