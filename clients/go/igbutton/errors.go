package igbutton

import (
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of igbutton's own errors.
const ErrorDomain = "igbutton"

// FieldViolation is one broken rule of a request, at a field path such as
// "template.buttons[1].title".
type FieldViolation struct {
	Field       string
	Description string
}

// ErrorDetails is an igbutton error decoded (AIP-193): the status code and
// message plus the google.rpc details packed into the status.
type ErrorDetails struct {
	// Code and Message are the gRPC status's.
	Code    codes.Code
	Message string
	// Reason is ErrorInfo.reason in UPPER_SNAKE, such as "RATE_LIMITED";
	// empty when the status carried no ErrorInfo.
	Reason string
	// Domain is ErrorInfo.domain, "igbutton" for igbutton's own errors.
	Domain string
	// Metadata is ErrorInfo.metadata: graphCode, graphSubcode, fbtraceId for
	// errors that came from Meta's Graph API.
	Metadata map[string]string
	// Violations lists every google.rpc.BadRequest field violation.
	Violations []FieldViolation
	// RetryDelay is google.rpc.RetryInfo's delay; HasRetryDelay says whether
	// the status carried one.
	RetryDelay    time.Duration
	HasRetryDelay bool
}

// Details decodes a gRPC error returned by any igbutton call. ok is false
// when err is nil or not a gRPC status error.
func Details(err error) (details *ErrorDetails, ok bool) {
	if err == nil {
		return nil, false
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	d := &ErrorDetails{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}}
	for _, detail := range st.Details() {
		switch v := detail.(type) {
		case *errdetails.ErrorInfo:
			d.Reason, d.Domain = v.GetReason(), v.GetDomain()
			for k, val := range v.GetMetadata() {
				d.Metadata[k] = val
			}
		case *errdetails.BadRequest:
			for _, fv := range v.GetFieldViolations() {
				d.Violations = append(d.Violations, FieldViolation{fv.GetField(), fv.GetDescription()})
			}
		case *errdetails.RetryInfo:
			d.RetryDelay, d.HasRetryDelay = v.GetRetryDelay().AsDuration(), true
		}
	}
	return d, true
}

// ErrorReason maps Reason to the contract's enum; ERROR_REASON_UNSPECIFIED
// when the error is not one of igbutton's (other domain, or no ErrorInfo).
func (d *ErrorDetails) ErrorReason() igbuttonv1.ErrorReason {
	if d == nil || d.Domain != ErrorDomain || d.Reason == "" {
		return igbuttonv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return igbuttonv1.ErrorReason(igbuttonv1.ErrorReason_value["ERROR_REASON_"+d.Reason])
}

// Reason is the igbutton ErrorReason of err, or ERROR_REASON_UNSPECIFIED.
//
//	if igbutton.Reason(err) == igbuttonv1.ErrorReason_ERROR_REASON_OUTSIDE_MESSAGING_WINDOW { ... }
func Reason(err error) igbuttonv1.ErrorReason {
	d, _ := Details(err)
	return d.ErrorReason()
}

// String is a one-line summary, for logs.
func (d *ErrorDetails) String() string {
	var b strings.Builder
	b.WriteString(d.Code.String())
	if d.Reason != "" {
		b.WriteString(" " + d.Reason)
	}
	b.WriteString(": " + d.Message)
	for _, v := range d.Violations {
		b.WriteString("; " + v.Field + ": " + v.Description)
	}
	return b.String()
}
