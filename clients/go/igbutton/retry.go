package igbutton

import (
	"context"
	_ "embed"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// ServiceConfig is the gRPC service config Dial installs as the default: it
// retries UNAVAILABLE (AIP-194) on the calls that are safe to repeat
// (SendButtonTemplate, which always carries a request_id, see below;
// ValidateButtonTemplate; AckPostbacks), up to 5 attempts with exponential
// backoff from 0.1 s to 5 s. It is a copy of clients/service_config.json,
// which the Java client ships too; a test keeps them identical.
//
// A gRPC retry resends the same request message, so a retried send carries
// the same request_id and igbutton sends it at most once. A server's service
// config, or grpc.WithDefaultServiceConfig passed through WithDialOptions,
// replaces it; grpc.WithDisableRetry turns retries off.
//
//go:embed service_config.json
var ServiceConfig string

const sendMethod = "/igbutton.v1.SendService/SendButtonTemplate"

// requestIDInterceptor gives a SendButtonTemplate without a request_id a fresh
// one before the call starts, so that the transparent retries of ServiceConfig
// (which resend this very message) are idempotent, as the Python client's
// sends are. The caller's message is not modified: set RequestId yourself to
// make your own repeats of a send idempotent too.
func requestIDInterceptor(
	ctx context.Context, method string, req, reply any,
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
) error {
	if send, ok := req.(*igbuttonv1.SendButtonTemplateRequest); ok && method == sendMethod && send.GetRequestId() == "" {
		withID := proto.Clone(send).(*igbuttonv1.SendButtonTemplateRequest)
		withID.RequestId = NewRequestID()
		req = withID
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
