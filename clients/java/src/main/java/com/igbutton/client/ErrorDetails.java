package com.igbutton.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import com.igbutton.v1.ErrorReason;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * An igbutton error decoded (AIP-193): the status code and message plus the google.rpc details
 * packed into the status.
 *
 * <pre>{@code
 * } catch (StatusRuntimeException e) {
 *   ErrorDetails d = ErrorDetails.of(e);
 *   if (d.errorReason() == ErrorReason.ERROR_REASON_RATE_LIMITED) { sleep(d.retryDelay()...); }
 * }
 * }</pre>
 *
 * @param code the gRPC status code
 * @param message the status message
 * @param reason ErrorInfo.reason in UPPER_SNAKE ("RATE_LIMITED"); empty without ErrorInfo
 * @param domain ErrorInfo.domain, "igbutton" for igbutton's own errors
 * @param metadata ErrorInfo.metadata: graphCode, graphSubcode, fbtraceId for Graph errors
 * @param violations every google.rpc.BadRequest field violation
 * @param retryDelay google.rpc.RetryInfo's delay, when the status carried one
 */
public record ErrorDetails(
    Status.Code code,
    String message,
    String reason,
    String domain,
    Map<String, String> metadata,
    List<BadRequest.FieldViolation> violations,
    Optional<Duration> retryDelay) {

  /** The google.rpc.ErrorInfo domain of igbutton's own errors. */
  public static final String DOMAIN = "igbutton";

  /** Decodes any throwable from an igbutton call (UNKNOWN for non-gRPC throwables). */
  public static ErrorDetails of(Throwable t) {
    Status status = Status.fromThrowable(t);
    com.google.rpc.Status proto = StatusProto.fromThrowable(t);
    String reason = "";
    String domain = "";
    Map<String, String> metadata = Map.of();
    List<BadRequest.FieldViolation> violations = new ArrayList<>();
    Optional<Duration> retryDelay = Optional.empty();
    if (proto != null) {
      for (Any detail : proto.getDetailsList()) {
        try {
          if (detail.is(ErrorInfo.class)) {
            ErrorInfo info = detail.unpack(ErrorInfo.class);
            reason = info.getReason();
            domain = info.getDomain();
            metadata = Map.copyOf(info.getMetadataMap());
          } else if (detail.is(BadRequest.class)) {
            violations.addAll(detail.unpack(BadRequest.class).getFieldViolationsList());
          } else if (detail.is(RetryInfo.class)) {
            com.google.protobuf.Duration d = detail.unpack(RetryInfo.class).getRetryDelay();
            retryDelay = Optional.of(Duration.ofSeconds(d.getSeconds(), d.getNanos()));
          }
        } catch (InvalidProtocolBufferException e) {
          // A malformed detail is skipped; the status code and message still stand.
        }
      }
    }
    String message = status.getDescription() == null ? "" : status.getDescription();
    return new ErrorDetails(
        status.getCode(), message, reason, domain, metadata, List.copyOf(violations), retryDelay);
  }

  /** The reason as the contract's enum; ERROR_REASON_UNSPECIFIED for other domains. */
  public ErrorReason errorReason() {
    if (!DOMAIN.equals(domain) || reason.isEmpty()) {
      return ErrorReason.ERROR_REASON_UNSPECIFIED;
    }
    try {
      return ErrorReason.valueOf("ERROR_REASON_" + reason);
    } catch (IllegalArgumentException e) {
      return ErrorReason.ERROR_REASON_UNSPECIFIED;
    }
  }

  @Override
  public String toString() {
    StringBuilder b = new StringBuilder(code.name());
    if (!reason.isEmpty()) {
      b.append(' ').append(reason);
    }
    b.append(": ").append(message);
    for (BadRequest.FieldViolation v : violations) {
      b.append("; ").append(v.getField()).append(": ").append(v.getDescription());
    }
    return b.toString();
  }
}
