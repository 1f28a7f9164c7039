package com.igbutton.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import com.igbutton.v1.AckPostbacksRequest;
import com.igbutton.v1.GetAccountRequest;
import com.igbutton.v1.GetAccountResponse;
import com.igbutton.v1.Group;
import com.igbutton.v1.SendButtonTemplateRequest;
import com.igbutton.v1.SendButtonTemplateResponse;
import com.igbutton.v1.StartPosition;
import com.igbutton.v1.SubscribePostbacksRequest;
import com.igbutton.v1.SubscribePostbacksResponse;
import com.igbutton.v1.TokenStatus;
import io.grpc.Context;
import io.grpc.StatusRuntimeException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Sends a template through a running igbutton (started with --sandbox), has the sandbox tap its
 * postback button and expects the postback on a subscription. tests/clients/test_roundtrip.py
 * runs it with IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL set; without them it is skipped.
 */
class RoundTripTest {
  private static final String RECIPIENT = "1254477777772919";

  @Test
  @Timeout(60)
  void sendTapAndReceiveThePostback() throws Exception {
    String addr = System.getenv("IGBUTTON_ADDR");
    String sandboxUrl = System.getenv("IGBUTTON_SANDBOX_URL");
    assumeTrue(
        addr != null && !addr.isEmpty() && sandboxUrl != null && !sandboxUrl.isEmpty(),
        "IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL are not set (point them at igbutton-server --sandbox)");

    String payload = "java-roundtrip-" + Buttons.newRequestId();
    try (IgbuttonClient ig = IgbuttonClient.connect(addr);
        Context.CancellableContext stream = Context.current().withCancellation()) {
      // The unique payload as prefix plus EARLIEST make the test independent of when the server
      // registers the stream relative to the tap.
      SubscribePostbacksRequest subscribe =
          SubscribePostbacksRequest.newBuilder()
              .setPayloadPrefix(payload)
              .setPosition(StartPosition.START_POSITION_EARLIEST)
              .build();
      Iterator<SubscribePostbacksResponse> postbacks =
          stream.call(
              () -> ig.postbacks().withDeadlineAfter(60, TimeUnit.SECONDS).subscribePostbacks(subscribe));

      SendButtonTemplateResponse sent;
      try {
        sent =
            ig.send()
                .withDeadlineAfter(30, TimeUnit.SECONDS)
                .sendButtonTemplate(
                    SendButtonTemplateRequest.newBuilder()
                        .setRecipientId(RECIPIENT)
                        .setRequestId(Buttons.newRequestId())
                        .setTemplate(
                            Buttons.template(
                                "Round trip from Java",
                                Buttons.postbackButton("Yes", payload),
                                Buttons.urlButton("Docs", "https://example.com/docs")))
                        .build());
      } catch (StatusRuntimeException e) {
        throw new AssertionError("SendButtonTemplate: " + ErrorDetails.of(e), e);
      }
      assertFalse(sent.getMessageId().isEmpty(), "SendButtonTemplate returned no message_id");

      Struct tapped = tap(sandboxUrl, sent.getMessageId(), 0);
      assertEquals(payload, tapped.getFieldsOrThrow("payload").getStringValue());

      assertTrue(postbacks.hasNext(), "the stream ended before the postback arrived");
      SubscribePostbacksResponse event = postbacks.next();
      assertEquals(payload, event.getPostback().getPayload());
      assertEquals("Yes", event.getPostback().getTitle());
      assertTrue(event.getPostback().getSequence() > 0, "postback has no sequence number");

      // The one configured account (the sandbox's), its token status included.
      GetAccountResponse got =
          ig.accounts()
              .withDeadlineAfter(30, TimeUnit.SECONDS)
              .getAccount(GetAccountRequest.getDefaultInstance());
      assertFalse(got.getAccount().getId().isEmpty(), "GetAccount returned no account id");
      assertEquals(TokenStatus.TOKEN_STATUS_OK, got.getAccount().getTokenStatus());
    }
  }

  /**
   * Dead-letters a postback in a consumer group (nacked on every attempt), reads the group with
   * getGroup and redrives it: it comes back with its sequence and delivery attempt 1.
   */
  @Test
  @Timeout(60)
  void deadLetterReadTheGroupAndRedrive() throws Exception {
    String addr = System.getenv("IGBUTTON_ADDR");
    String sandboxUrl = System.getenv("IGBUTTON_SANDBOX_URL");
    assumeTrue(
        addr != null && !addr.isEmpty() && sandboxUrl != null && !sandboxUrl.isEmpty(),
        "IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL are not set (point them at igbutton-server --sandbox)");
    String id = Buttons.newRequestId();
    String group = "java-" + id.substring(0, 8);
    String payload = "java-group-" + id;
    try (IgbuttonClient ig = IgbuttonClient.connect(addr);
        Context.CancellableContext stream = Context.current().withCancellation()) {
      SubscribePostbacksRequest subscribe =
          SubscribePostbacksRequest.newBuilder()
              .setPayloadPrefix(payload)
              .setGroup(group)
              .setPosition(StartPosition.START_POSITION_EARLIEST)
              .build();
      Iterator<SubscribePostbacksResponse> postbacks =
          stream.call(
              () -> ig.postbacks().withDeadlineAfter(60, TimeUnit.SECONDS).subscribePostbacks(subscribe));
      SendButtonTemplateResponse sent =
          ig.send()
              .withDeadlineAfter(30, TimeUnit.SECONDS)
              .sendButtonTemplate(
                  SendButtonTemplateRequest.newBuilder()
                      .setRecipientId(RECIPIENT)
                      .setRequestId(Buttons.newRequestId())
                      .setTemplate(
                          Buttons.template(
                              "Group round trip from Java", Buttons.postbackButton("Yes", payload)))
                      .build());
      tap(sandboxUrl, sent.getMessageId(), 0);

      long sequence;
      for (int attempt = 1; ; attempt++) {
        assertTrue(postbacks.hasNext(), "the stream ended");
        SubscribePostbacksResponse event = postbacks.next();
        assertEquals(attempt, event.getDeliveryAttempt());
        sequence = event.getPostback().getSequence();
        ig.postbacks()
            .ackPostbacks(
                AckPostbacksRequest.newBuilder().setGroup(group).addNackIds(event.getAckId()).build());
        Group info = ig.getGroup(group);
        if (info.getDeadLetterCount() == 1) {
          assertEquals(info.getMaxDeliveryAttempts(), attempt);
          break;
        }
      }

      assertEquals(1, ig.redriveDeadLetters(group, sequence));
      assertTrue(postbacks.hasNext(), "the stream ended");
      SubscribePostbacksResponse again = postbacks.next();
      assertEquals(sequence, again.getPostback().getSequence());
      assertEquals(1, again.getDeliveryAttempt());
      ig.postbacks()
          .ackPostbacks(
              AckPostbacksRequest.newBuilder().setGroup(group).addAckIds(again.getAckId()).build());
    }
  }

  /** Asks the sandbox to tap a button of a message it recorded; returns its JSON answer. */
  private static Struct tap(String sandboxUrl, String messageId, int index) throws Exception {
    // Struct would print the index as 0.0; the sandbox wants an integer.
    String quotedId = JsonFormat.printer().print(Value.newBuilder().setStringValue(messageId));
    String body = "{\"message_id\": " + quotedId + ", \"button_index\": " + index + "}";
    HttpRequest request =
        HttpRequest.newBuilder(URI.create(sandboxUrl.replaceAll("/+$", "") + "/_sandbox/tap"))
            .timeout(Duration.ofSeconds(30))
            .header("Content-Type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString(body))
            .build();
    HttpResponse<String> response =
        HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString());
    assertEquals(200, response.statusCode(), () -> "sandbox tap: " + response.body());
    Struct.Builder result = Struct.newBuilder();
    JsonFormat.parser().merge(response.body(), result);
    return result.build();
  }
}
