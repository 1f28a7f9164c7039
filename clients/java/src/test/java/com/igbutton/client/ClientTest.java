package com.igbutton.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import com.igbutton.v1.Button;
import com.igbutton.v1.ButtonTemplate;
import com.igbutton.v1.ErrorReason;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.Optional;
import org.junit.jupiter.api.Test;

class ClientTest {
  @Test
  void buttonBuildersSetExactlyOneAction() {
    ButtonTemplate t =
        Buttons.template(
            "Pick",
            Buttons.urlButton("Visit", "https://example.com"),
            Buttons.postbackButton("Yes", "ANSWER_YES"));
    assertEquals(Button.ActionCase.URL, t.getButtons(0).getActionCase());
    assertEquals("https://example.com", t.getButtons(0).getUrl().getUrl());
    assertEquals("ANSWER_YES", t.getButtons(1).getPostback().getPayload());
  }

  @Test
  void requestIdsAreFreshUuids() {
    String a = Buttons.newRequestId();
    assertTrue(a.matches("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"));
    assertNotEquals(a, Buttons.newRequestId());
  }

  @Test
  void decodesErrorInfoBadRequestAndRetryInfo() {
    com.google.rpc.Status status =
        com.google.rpc.Status.newBuilder()
            .setCode(Code.RESOURCE_EXHAUSTED_VALUE)
            .setMessage("slow down")
            .addDetails(
                Any.pack(
                    ErrorInfo.newBuilder()
                        .setReason("RATE_LIMITED")
                        .setDomain("igbutton")
                        .putMetadata("graphCode", "4")
                        .build()))
            .addDetails(
                Any.pack(
                    BadRequest.newBuilder()
                        .addFieldViolations(
                            BadRequest.FieldViolation.newBuilder()
                                .setField("template.buttons[1].title")
                                .setDescription("too long"))
                        .build()))
            .addDetails(
                Any.pack(
                    RetryInfo.newBuilder()
                        .setRetryDelay(
                            com.google.protobuf.Duration.newBuilder()
                                .setSeconds(1)
                                .setNanos(500_000_000))
                        .build()))
            .build();
    ErrorDetails d = ErrorDetails.of(StatusProto.toStatusRuntimeException(status));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, d.code());
    assertEquals("slow down", d.message());
    assertEquals(ErrorReason.ERROR_REASON_RATE_LIMITED, d.errorReason());
    assertEquals("4", d.metadata().get("graphCode"));
    assertEquals("template.buttons[1].title", d.violations().get(0).getField());
    assertEquals(Optional.of(Duration.ofMillis(1500)), d.retryDelay());
  }

  @Test
  void decodesAPlainThrowable() {
    ErrorDetails d = ErrorDetails.of(new IllegalStateException("boom"));
    assertEquals(Status.Code.UNKNOWN, d.code());
    assertEquals(ErrorReason.ERROR_REASON_UNSPECIFIED, d.errorReason());
    assertTrue(d.retryDelay().isEmpty());
  }
}
