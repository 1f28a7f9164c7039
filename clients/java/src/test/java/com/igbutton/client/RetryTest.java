package com.igbutton.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.igbutton.v1.SendButtonTemplateRequest;
import com.igbutton.v1.SendButtonTemplateResponse;
import com.igbutton.v1.SendServiceGrpc;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

class RetryTest {
  /** Answers {@code failures} sends with {@code code}, then OK; records every request_id. */
  static final class FlakySend extends SendServiceGrpc.SendServiceImplBase {
    final List<String> ids = new CopyOnWriteArrayList<>();
    final int failures;
    final Status code;

    FlakySend(int failures, Status code) {
      this.failures = failures;
      this.code = code;
    }

    @Override
    public void sendButtonTemplate(
        SendButtonTemplateRequest request, StreamObserver<SendButtonTemplateResponse> response) {
      ids.add(request.getRequestId());
      if (ids.size() <= failures) {
        response.onError(code.withDescription("injected").asRuntimeException());
        return;
      }
      response.onNext(SendButtonTemplateResponse.newBuilder().setMessageId("m1").build());
      response.onCompleted();
    }
  }

  private static Server serve(FlakySend impl) throws Exception {
    return NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
        .addService(impl)
        .build()
        .start();
  }

  @Test
  void theJarShipsTheSharedServiceConfig() throws Exception {
    // Surefire runs in the project directory, clients/java.
    String shared = Files.readString(Path.of("../service_config.json"), StandardCharsets.UTF_8);
    assertEquals(shared, ServiceConfig.json());
  }

  @Test
  @Timeout(30)
  void aSendRetriedAfterUnavailableKeepsOneRequestId() throws Exception {
    for (String given : List.of("", "caller-chosen-id")) {
      FlakySend fake = new FlakySend(2, Status.UNAVAILABLE);
      Server server = serve(fake);
      try (IgbuttonClient ig = IgbuttonClient.connect("127.0.0.1:" + server.getPort())) {
        SendButtonTemplateRequest request =
            SendButtonTemplateRequest.newBuilder().setRequestId(given).build();
        assertEquals(
            "m1",
            ig.send().withDeadlineAfter(20, TimeUnit.SECONDS).sendButtonTemplate(request)
                .getMessageId());
        assertEquals(3, fake.ids.size(), "two UNAVAILABLE, then OK: " + fake.ids);
        String first = fake.ids.get(0);
        assertFalse(first.isEmpty(), "no request_id was set");
        assertEquals(List.of(given.isEmpty() ? first : given, first, first), fake.ids);
      } finally {
        server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
      }
    }
  }

  @Test
  @Timeout(30)
  void otherCodesAndRetryOffAreNotRetried() throws Exception {
    FlakySend unknown = new FlakySend(5, Status.UNKNOWN);
    Server server = serve(unknown);
    try (IgbuttonClient ig = IgbuttonClient.connect("127.0.0.1:" + server.getPort())) {
      StatusRuntimeException e =
          assertThrows(
              StatusRuntimeException.class,
              () -> ig.send().sendButtonTemplate(SendButtonTemplateRequest.getDefaultInstance()));
      assertEquals(Status.Code.UNKNOWN, e.getStatus().getCode());
      assertEquals(1, unknown.ids.size());
    } finally {
      server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    FlakySend unavailable = new FlakySend(5, Status.UNAVAILABLE);
    server = serve(unavailable);
    try (IgbuttonClient ig =
        IgbuttonClient.builder("127.0.0.1:" + server.getPort()).retry(false).build()) {
      assertThrows(
          StatusRuntimeException.class,
          () -> ig.send().sendButtonTemplate(SendButtonTemplateRequest.getDefaultInstance()));
      assertEquals(1, unavailable.ids.size());
    } finally {
      server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }
}
