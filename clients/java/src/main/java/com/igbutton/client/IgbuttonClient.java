package com.igbutton.client;

import com.igbutton.v1.AccountServiceGrpc;
import com.igbutton.v1.GetGroupRequest;
import com.igbutton.v1.Group;
import com.igbutton.v1.GroupServiceGrpc;
import com.igbutton.v1.PostbackServiceGrpc;
import com.igbutton.v1.RedriveDeadLettersRequest;
import com.igbutton.v1.SendServiceGrpc;
import com.igbutton.v1.SubscribePostbacksRequest;
import io.grpc.ClientInterceptor;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.BiConsumer;

/**
 * One channel to igbutton and the generated stubs of both services on it. Thread-safe; create one
 * per process and close it on shutdown.
 *
 * <p>The channel retries UNAVAILABLE on the calls that are safe to repeat, as {@link
 * ServiceConfig} says, and a send without a request_id gets one, so a retried send goes out at
 * most once; {@link #subscribe} gives a postback stream that resumes after a server restart.
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

  /**
   * A SubscribePostbacks stream that reconnects after a server restart or a lost connection and
   * resumes where it left off (see {@link Subscription}), with the default reconnect delays.
   */
  public Subscription subscribe(SubscribePostbacksRequest request) {
    return subscribe(request, Subscription.Reconnect.DEFAULT, null);
  }

  /**
   * As {@link #subscribe(SubscribePostbacksRequest)}, with its reconnect delays and a callback
   * told the error and the delay each time a stream is lost (null for none).
   */
  public Subscription subscribe(
      SubscribePostbacksRequest request,
      Subscription.Reconnect reconnect,
      BiConsumer<StatusRuntimeException, Duration> onDisconnect) {
    return new Subscription(postbacks(), request, reconnect, onDisconnect);
  }

  /** PostbackService with StreamObserver callbacks. */
  public PostbackServiceGrpc.PostbackServiceStub postbacksAsync() {
    return PostbackServiceGrpc.newStub(channel);
  }

  /** AccountService, blocking: token status and webhook subscription checks per account. */
  public AccountServiceGrpc.AccountServiceBlockingStub accounts() {
    return AccountServiceGrpc.newBlockingStub(channel);
  }

  /** A blocking stub for GroupService: every operation on consumer groups (admin callers). */
  public GroupServiceGrpc.GroupServiceBlockingStub groups() {
    return GroupServiceGrpc.newBlockingStub(channel);
  }

  /**
   * A group's resource name: a plain name such as {@code billing} is short for {@code
   * groups/billing} (open mode); names with a {@code /} are kept.
   */
  public static String groupName(String name) {
    return name.contains("/") ? name : "groups/" + name;
  }

  /** A consumer group's configuration and state (GroupService.GetGroup). */
  public Group getGroup(String name) {
    return groups().getGroup(GetGroupRequest.newBuilder().setName(groupName(name)).build()).getGroup();
  }

  /**
   * Delivers a group's dead letters with these sequences again from attempt 1 (none given: every
   * dead letter); returns how many were redriven.
   */
  public int redriveDeadLetters(String name, long... sequences) {
    RedriveDeadLettersRequest.Builder request =
        RedriveDeadLettersRequest.newBuilder().setName(groupName(name)).setAll(sequences.length == 0);
    for (long sequence : sequences) {
      request.addSequences(sequence);
    }
    return groups().redriveDeadLetters(request.build()).getRedrivenCount();
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
    private boolean retry = true;
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

    /**
     * Whether the channel retries UNAVAILABLE as {@link ServiceConfig} says (default true). A
     * service config from the name resolver still takes precedence, as in grpc-java.
     */
    public Builder retry(boolean enabled) {
      this.retry = enabled;
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
      if (retry) {
        builder.defaultServiceConfig(ServiceConfig.asMap()).enableRetry();
      } else {
        builder.disableRetry();
      }
      // Ours first in the list runs last, next to the channel: the request_id is set before
      // the channel's retries repeat the message, whatever the caller's interceptors do.
      List<ClientInterceptor> all = new ArrayList<>();
      all.add(new RequestIdInterceptor());
      all.addAll(interceptors);
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
