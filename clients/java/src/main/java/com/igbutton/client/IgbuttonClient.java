package com.igbutton.client;

import com.igbutton.v1.AccountServiceGrpc;
import com.igbutton.v1.PostbackServiceGrpc;
import com.igbutton.v1.SendServiceGrpc;
import io.grpc.ClientInterceptor;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * One channel to igbutton and the generated stubs of both services on it. Thread-safe; create one
 * per process and close it on shutdown.
 *
 * <pre>{@code
 * try (IgbuttonClient ig = IgbuttonClient.connect("localhost:50051")) {
 *   SendButtonTemplateResponse sent = ig.send().sendButtonTemplate(...);
 * }
 * }</pre>
 */
public final class IgbuttonClient implements AutoCloseable {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;

  private IgbuttonClient(ManagedChannel channel) {
    this.channel = channel;
  }

  /** A plaintext client for {@code target} ("host:port"), igbutton's default listener. */
  public static IgbuttonClient connect(String target) {
    return builder(target).build();
  }

  /** A builder for TLS, a bearer token or extra interceptors. */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  /** SendService, blocking: sendButtonTemplate, validateButtonTemplate. */
  public SendServiceGrpc.SendServiceBlockingStub send() {
    return SendServiceGrpc.newBlockingStub(channel);
  }

  /** SendService returning futures. */
  public SendServiceGrpc.SendServiceFutureStub sendFuture() {
    return SendServiceGrpc.newFutureStub(channel);
  }

  /** PostbackService, blocking: subscribePostbacks returns an iterator over the stream. */
  public PostbackServiceGrpc.PostbackServiceBlockingStub postbacks() {
    return PostbackServiceGrpc.newBlockingStub(channel);
  }

  /** PostbackService with StreamObserver callbacks. */
  public PostbackServiceGrpc.PostbackServiceStub postbacksAsync() {
    return PostbackServiceGrpc.newStub(channel);
  }

  /** AccountService, blocking: token status and webhook subscription checks per account. */
  public AccountServiceGrpc.AccountServiceBlockingStub accounts() {
    return AccountServiceGrpc.newBlockingStub(channel);
  }

  /** The underlying channel, for health checks or other stubs. */
  public ManagedChannel channel() {
    return channel;
  }

  /** Shuts the channel down, waiting up to five seconds for calls in flight. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** Configures an {@link IgbuttonClient}. */
  public static final class Builder {
    private final String target;
    private boolean tls;
    private String bearerToken;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder(String target) {
      this.target = target;
    }

    /** Connect over TLS with the JVM's trust store (default: plaintext). */
    public Builder useTls() {
      this.tls = true;
      return this;
    }

    /**
     * Send {@code authorization: Bearer <token>} on every call. Without {@link #useTls()} the
     * token travels in clear: only on a trusted network or loopback.
     */
    public Builder bearerToken(String token) {
      this.bearerToken = token;
      return this;
    }

    /** Add client interceptors (logging, tracing, ...). */
    public Builder intercept(ClientInterceptor... more) {
      interceptors.addAll(List.of(more));
      return this;
    }

    /** Creates the client; the channel connects on the first call. */
    public IgbuttonClient build() {
      ManagedChannelBuilder<?> builder = ManagedChannelBuilder.forTarget(target);
      if (tls) {
        builder.useTransportSecurity();
      } else {
        builder.usePlaintext();
      }
      List<ClientInterceptor> all = new ArrayList<>(interceptors);
      if (bearerToken != null && !bearerToken.isEmpty()) {
        Metadata headers = new Metadata();
        headers.put(AUTHORIZATION, "Bearer " + bearerToken);
        all.add(MetadataUtils.newAttachHeadersInterceptor(headers));
      }
      builder.intercept(all);
      return new IgbuttonClient(builder.build());
    }
  }
}
