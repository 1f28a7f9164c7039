package igbutton

import (
	"context"
	"crypto/tls"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// Client holds one connection to igbutton and the generated stubs of both
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
// the first call connects, and a call made while the server is unreachable
// fails with UNAVAILABLE.
func Dial(target string, opts ...Option) (*Client, error) {
	var cfg dialConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	dialOpts := make([]grpc.DialOption, 0, len(cfg.dialOptions)+2)
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
	}, nil
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
