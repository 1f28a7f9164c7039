package com.igbutton.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.igbutton.v1.Postback;
import com.igbutton.v1.PostbackServiceGrpc;
import com.igbutton.v1.SubscribePostbacksRequest;
import com.igbutton.v1.SubscribePostbacksResponse;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

class SubscriptionTest {
  private static final Subscription.Reconnect FAST =
      new Subscription.Reconnect(Duration.ofMillis(1), Duration.ofMillis(5), 0);

  /** The n-th stream sends script[n]'s sequences, then ends with its status (OK: cleanly). */
  record Step(List<Long> sequences, Status end) {}

  static final class Scripted extends PostbackServiceGrpc.PostbackServiceImplBase {
    final List<SubscribePostbacksRequest> requests = new CopyOnWriteArrayList<>();
    final List<Step> script;

    Scripted(List<Step> script) {
      this.script = script;
    }

    @Override
    public void subscribePostbacks(
        SubscribePostbacksRequest request, StreamObserver<SubscribePostbacksResponse> out) {
      requests.add(request);
      if (requests.size() > script.size()) {
        out.onError(Status.FAILED_PRECONDITION.withDescription("script over").asException());
        return;
      }
      Step step = script.get(requests.size() - 1);
      for (long sequence : step.sequences()) {
        out.onNext(
            SubscribePostbacksResponse.newBuilder()
                .setPostback(Postback.newBuilder().setSequence(sequence))
                .build());
      }
      if (step.end().isOk()) {
        out.onCompleted();
      } else {
        out.onError(step.end().withDescription("scripted end").asException());
      }
    }
  }

  private Server server;
  private IgbuttonClient client;

  private IgbuttonClient serve(Scripted impl) throws Exception {
    server =
        NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
            .addService(impl)
            .build()
            .start();
    client = IgbuttonClient.connect("127.0.0.1:" + server.getPort());
    return client;
  }

  @AfterEach
  void stop() throws Exception {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  @Test
  @Timeout(30)
  void aBroadcastResumesAfterTheLastSequence() throws Exception {
    Scripted fake =
        new Scripted(
            List.of(
                new Step(List.of(5L, 6L), Status.UNAVAILABLE),
                new Step(List.of(6L, 7L), Status.CANCELLED), // resends 6; CANCELLED by the server
                new Step(List.of(8L), Status.PERMISSION_DENIED)));
    List<Long> got = new ArrayList<>();
    SubscribePostbacksRequest request =
        SubscribePostbacksRequest.newBuilder().setPayloadPrefix("P").build();
    try (Subscription sub = serve(fake).subscribe(request, FAST, null)) {
      StatusRuntimeException end =
          assertThrows(
              StatusRuntimeException.class,
              () -> sub.forEachRemaining(e -> got.add(e.getPostback().getSequence())));
      assertEquals(Status.Code.PERMISSION_DENIED, end.getStatus().getCode());
      assertFalse(sub.hasNext(), "the subscription goes on after a fatal error");
      assertEquals(8L, sub.lastSequence().orElseThrow());
    }
    assertEquals(List.of(5L, 6L, 7L, 8L), got);
    assertEquals(3, fake.requests.size());
    assertEquals(
        SubscribePostbacksRequest.StartCase.START_NOT_SET, fake.requests.get(0).getStartCase());
    assertEquals(6L, fake.requests.get(1).getAfterSequence());
    assertEquals(7L, fake.requests.get(2).getAfterSequence());
    assertTrue(fake.requests.stream().allMatch(r -> r.getPayloadPrefix().equals("P")));
  }

  @Test
  @Timeout(30)
  void aGroupRejoinsUnchangedAndKeepsRedeliveries() throws Exception {
    Scripted fake =
        new Scripted(
            List.of(new Step(List.of(4L), Status.UNAVAILABLE), new Step(List.of(4L), Status.OK)));
    List<Long> got = new ArrayList<>();
    SubscribePostbacksRequest request =
        SubscribePostbacksRequest.newBuilder().setGroup("g").build();
    try (Subscription sub = serve(fake).subscribe(request, FAST, null)) {
      sub.forEachRemaining(e -> got.add(e.getPostback().getSequence()));
    }
    assertEquals(List.of(4L, 4L), got);
    assertTrue(
        fake.requests.stream()
            .allMatch(
                r ->
                    r.getGroup().equals("g")
                        && r.getStartCase() == SubscribePostbacksRequest.StartCase.START_NOT_SET));
  }
}
