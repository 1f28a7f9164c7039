package com.igbutton.client;

import com.igbutton.v1.SendButtonTemplateRequest;
import com.igbutton.v1.SendServiceGrpc;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall.SimpleForwardingClientCall;
import io.grpc.MethodDescriptor;

/**
 * Gives a SendButtonTemplate without a request_id a fresh one before the call reaches the
 * channel, so that the channel's retries (which resend this very message) are idempotent, as the
 * Python client's sends are. The caller's message is immutable and stays as it was: set the
 * request_id yourself to make your own repeats of a send idempotent too.
 */
final class RequestIdInterceptor implements ClientInterceptor {
  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
    ClientCall<ReqT, RespT> call = next.newCall(method, options);
    if (!method.getFullMethodName()
        .equals(SendServiceGrpc.getSendButtonTemplateMethod().getFullMethodName())) {
      return call;
    }
    return new SimpleForwardingClientCall<>(call) {
      @Override
      public void sendMessage(ReqT message) {
        if (message instanceof SendButtonTemplateRequest send && send.getRequestId().isEmpty()) {
          @SuppressWarnings("unchecked") // ReqT is SendButtonTemplateRequest for this method
          ReqT withId = (ReqT) send.toBuilder().setRequestId(Buttons.newRequestId()).build();
          super.sendMessage(withId);
        } else {
          super.sendMessage(message);
        }
      }
    };
  }
}
