package com.igbutton.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import com.igbutton.v1.Postback;
import com.igbutton.v1.SendButtonTemplateRequest;
import com.igbutton.v1.StartPosition;
import com.igbutton.v1.SubscribePostbacksRequest;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Retry and resume against a running igbutton, with what tests/clients/harness.py provides
 * besides it: a proxy that loses one answer on request (IGBUTTON_FLAKY_ADDR) and a control API
 * (IGBUTTON_CONTROL_URL) that restarts igbutton on the same ports and SQLite file. Skipped
 * without them.
 */
class ResilienceTest {
  private static final String RECIPIENT = "1254477777772919";
  private static final HttpClient HTTP = HttpClient.newHttpClient();

  private String addr;
  private String flakyAddr;
  private String sandboxUrl;
  private String controlUrl;

  @BeforeEach
  void environment() {
    addr = System.getenv("IGBUTTON_ADDR");
    flakyAddr = System.getenv("IGBUTTON_FLAKY_ADDR");
    sandboxUrl = System.getenv("IGBUTTON_SANDBOX_URL");
    controlUrl = System.getenv("IGBUTTON_CONTROL_URL");
    assumeTrue(
        addr != null && flakyAddr != null && sandboxUrl != null && controlUrl != null,
        "IGBUTTON_ADDR, IGBUTTON_FLAKY_ADDR, IGBUTTON_SANDBOX_URL and IGBUTTON_CONTROL_URL are not"
            + " set (tests/clients/test_roundtrip.py sets them)");
  }

  /**
   * igbutton sends the message, then the connection is lost before its answer arrives
   * (UNAVAILABLE). The channel retries with the request_id the client set, so igbutton answers
   * from its idempotency record and Instagram (the sandbox) receives the message once.
   */
  @Test
  @Timeout(60)
  void aSendRetriedAfterALostAnswerGoesOutOnce() throws Exception {
    try (IgbuttonClient ig = IgbuttonClient.connect(flakyAddr)) {
      http("POST", controlUrl + "/drop-next-answer");
      String text = "Java retry " + Buttons.newRequestId();
      // No request_id: the client must set one itself, or the retry would send twice.
      String messageId =
          ig.send()
              .withDeadlineAfter(30, TimeUnit.SECONDS)
              .sendButtonTemplate(
                  SendButtonTemplateRequest.newBuilder()
                      .setRecipientId(RECIPIENT)
                      .setTemplate(
                          Buttons.template(text, Buttons.postbackButton("Yes", "java-retry")))
                      .build())
              .getMessageId();
      double dropped =
          json(http("GET", controlUrl + "/drops")).getFieldsOrThrow("dropped").getNumberValue();
      assertTrue(dropped >= 1, "the proxy dropped no answer: the test injected nothing");
      assertEquals(List.of(messageId), acceptedWithText(text));
    }
  }

  /**
   * A subscription receives one postback; igbutton is stopped and a new process started on the
   * same port and SQLite file; two more postbacks are stored before the subscription reads
   * again. It must reconnect and deliver exactly those two, in order.
   */
  @Test
  @Timeout(90)
  void aSubscriptionResumesAfterARestartWithoutGapOrDuplicate() throws Exception {
    String prefix = "java-resume-" + Buttons.newRequestId();
    AtomicInteger disconnects = new AtomicInteger();
    try (IgbuttonClient ig = IgbuttonClient.connect(addr);
        Subscription sub =
            ig.subscribe(
                SubscribePostbacksRequest.newBuilder()
                    .setPayloadPrefix(prefix)
                    .setPosition(StartPosition.START_POSITION_EARLIEST)
                    .build(),
                Subscription.Reconnect.DEFAULT,
                (error, delay) -> disconnects.incrementAndGet())) {
      sendAndTap(ig, prefix + "-1");
      assertTrue(sub.hasNext(), "the subscription ended");
      Postback first = sub.next().getPostback();
      assertEquals(prefix + "-1", first.getPayload());

      http("POST", controlUrl + "/restart");
      // Stored while the subscription is disconnected: a resume from "latest" would lose them,
      // one from the start would repeat the first.
      sendAndTap(ig, prefix + "-2");
      sendAndTap(ig, prefix + "-3");

      long previous = first.getSequence();
      for (String want : List.of(prefix + "-2", prefix + "-3")) {
        assertTrue(sub.hasNext(), "the subscription ended");
        Postback got = sub.next().getPostback();
        assertEquals(want, got.getPayload());
        assertTrue(got.getSequence() > previous, got.getSequence() + " after " + previous);
        previous = got.getSequence();
      }
      assertTrue(disconnects.get() > 0, "the subscription never saw the restart");
      assertEquals(previous, sub.lastSequence().orElseThrow());
    }
  }

  private void sendAndTap(IgbuttonClient ig, String payload) throws Exception {
    String messageId =
        ig.send()
            .withDeadlineAfter(30, TimeUnit.SECONDS)
            .sendButtonTemplate(
                SendButtonTemplateRequest.newBuilder()
                    .setRecipientId(RECIPIENT)
                    .setTemplate(
                        Buttons.template(
                            "Resume from Java", Buttons.postbackButton("Yes", payload)))
                    .build())
            .getMessageId();
    String quotedId = JsonFormat.printer().print(Value.newBuilder().setStringValue(messageId));
    String body = "{\"message_id\": " + quotedId + ", \"button_index\": 0}";
    HttpResponse<String> tapped =
        HTTP.send(
            HttpRequest.newBuilder(URI.create(sandboxUrl.replaceAll("/+$", "") + "/_sandbox/tap"))
                .timeout(Duration.ofSeconds(30))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build(),
            HttpResponse.BodyHandlers.ofString());
    assertEquals(200, tapped.statusCode(), tapped::body);
    assertEquals(200, json(tapped.body()).getFieldsOrThrow("webhook_status").getNumberValue());
  }

  /** The ids of the messages the sandbox accepted whose template text is {@code text}. */
  private List<String> acceptedWithText(String text) throws Exception {
    ListValue messages =
        json(http("GET", sandboxUrl.replaceAll("/+$", "") + "/_sandbox/messages"))
            .getFieldsOrThrow("messages")
            .getListValue();
    List<String> ids = new ArrayList<>();
    for (Value m : messages.getValuesList()) {
      Struct message = m.getStructValue();
      String body = JsonFormat.printer().print(message.getFieldsOrThrow("body"));
      if (message.getFieldsOrThrow("accepted").getBoolValue() && body.contains(text)) {
        ids.add(message.getFieldsOrThrow("message_id").getStringValue());
      }
    }
    return ids;
  }

  private static String http(String method, String url) throws Exception {
    HttpResponse<String> response =
        HTTP.send(
            HttpRequest.newBuilder(URI.create(url))
                .timeout(Duration.ofSeconds(60))
                .method(method, HttpRequest.BodyPublishers.noBody())
                .build(),
            HttpResponse.BodyHandlers.ofString());
    assertTrue(response.statusCode() / 100 == 2, () -> method + " " + url + ": " + response.body());
    return response.body();
  }

  private static Struct json(String text) throws Exception {
    Struct.Builder result = Struct.newBuilder();
    JsonFormat.parser().merge(text, result);
    return result.build();
  }
}
