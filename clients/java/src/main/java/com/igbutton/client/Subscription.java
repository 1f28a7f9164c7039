package com.igbutton.client;

import com.google.protobuf.Timestamp;
import com.igbutton.v1.PostbackServiceGrpc.PostbackServiceBlockingStub;
import com.igbutton.v1.StartPosition;
import com.igbutton.v1.SubscribePostbacksRequest;
import com.igbutton.v1.SubscribePostbacksResponse;
import io.grpc.Context;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.time.Instant;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.OptionalLong;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.BiConsumer;

/**
 * A SubscribePostbacks stream, as a blocking iterator, that reconnects after UNAVAILABLE (a server
 * restart or a lost connection) or a CANCELLED it did not cause (igbutton cancels calls it has no
 * room for), with growing delays, and resumes where it left off:
 *
 * <ul>
 *   <li>a broadcast subscription resumes with {@code after_sequence} set to the last sequence it
 *       returned, so nothing is lost and nothing repeats (an event at or below it is dropped,
 *       should the server send it again); if nothing was returned yet and it started at LATEST,
 *       it resumes from the time it first subscribed;
 *   <li>a group subscription rejoins the group, which keeps its own position; unacknowledged
 *       postbacks come again after their ack deadline.
 * </ul>
 *
 * <p>Other errors are thrown from {@link #hasNext()} as {@link StatusRuntimeException}; a clean
 * end of the stream or {@link #close()} (from any thread) ends the iteration. For one thread.
 */
public final class Subscription implements Iterator<SubscribePostbacksResponse>, AutoCloseable {
  /** How a subscription waits between reconnects. */
  public record Reconnect(Duration initialBackoff, Duration maxBackoff, int maxReconnects) {
    /** The defaults, as the Python client's: 200 ms doubling up to 10 s, forever (0). */
    public static final Reconnect DEFAULT =
        new Reconnect(Duration.ofMillis(200), Duration.ofSeconds(10), 0);
  }

  private final PostbackServiceBlockingStub stub;
  private final SubscribePostbacksRequest base;
  private final Reconnect reconnect;
  private final BiConsumer<StatusRuntimeException, Duration> onDisconnect;
  private final Object lock = new Object();

  private Context.CancellableContext callContext;
  private Iterator<SubscribePostbacksResponse> stream;
  private SubscribePostbacksResponse pending;
  private boolean connected;
  private Timestamp since;
  private long lastSequence = -1;
  private int failures;
  private volatile boolean closed;

  Subscription(
      PostbackServiceBlockingStub stub,
      SubscribePostbacksRequest request,
      Reconnect reconnect,
      BiConsumer<StatusRuntimeException, Duration> onDisconnect) {
    this.stub = stub;
    this.base = request;
    this.reconnect = reconnect;
    this.onDisconnect = onDisconnect;
  }

  /** The sequence of the last postback returned (broadcast only), empty before the first. */
  public OptionalLong lastSequence() {
    return lastSequence < 0 ? OptionalLong.empty() : OptionalLong.of(lastSequence);
  }

  @Override
  public boolean hasNext() {
    while (pending == null) {
      if (closed) {
        return false;
      }
      try {
        Iterator<SubscribePostbacksResponse> current = currentStream();
        if (!current.hasNext()) {
          close(); // the server ended the stream cleanly
          return false;
        }
        SubscribePostbacksResponse event = current.next();
        failures = 0;
        if (base.getGroup().isEmpty()) {
          long sequence = event.getPostback().getSequence();
          if (lastSequence >= 0 && Long.compareUnsigned(sequence, lastSequence) <= 0) {
            continue; // already returned before the reconnect
          }
          lastSequence = sequence;
        }
        pending = event;
      } catch (StatusRuntimeException e) {
        dropStream();
        if (closed) {
          return false;
        }
        pause(e);
      }
    }
    return true;
  }

  @Override
  public SubscribePostbacksResponse next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the subscription has ended");
    }
    SubscribePostbacksResponse event = pending;
    pending = null;
    return event;
  }

  /** Ends the subscription; a {@link #hasNext()} blocked in another thread returns false. */
  @Override
  public void close() {
    synchronized (lock) {
      closed = true;
      if (callContext != null) {
        callContext.cancel(null);
      }
      lock.notifyAll();
    }
  }

  private Iterator<SubscribePostbacksResponse> currentStream() {
    synchronized (lock) {
      if (stream == null) {
        callContext = Context.current().withCancellation();
        SubscribePostbacksRequest request = nextRequest();
        Context previous = callContext.attach(); // the call belongs to callContext
        try {
          stream = stub.subscribePostbacks(request);
        } finally {
          callContext.detach(previous);
        }
      }
      return stream;
    }
  }

  private void dropStream() {
    synchronized (lock) {
      if (callContext != null) {
        callContext.cancel(null);
      }
      callContext = null;
      stream = null;
    }
  }

  /** Waits before the next attempt, or throws {@code e} when it must not reconnect. */
  private void pause(StatusRuntimeException e) {
    failures++;
    Status.Code code = e.getStatus().getCode();
    if ((code != Status.Code.UNAVAILABLE && code != Status.Code.CANCELLED)
        || (reconnect.maxReconnects() > 0 && failures > reconnect.maxReconnects())) {
      close();
      throw e;
    }
    long bound =
        Math.min(
            reconnect.maxBackoff().toMillis(),
            reconnect.initialBackoff().toMillis() << Math.min(failures - 1, 20));
    // Jitter, so that subscribers reconnecting after one restart spread out.
    long delay = bound / 2 + ThreadLocalRandom.current().nextLong(bound / 2 + 1);
    if (onDisconnect != null) {
      onDisconnect.accept(e, Duration.ofMillis(delay));
    }
    long until = System.nanoTime() + delay * 1_000_000;
    synchronized (lock) {
      try {
        long left = delay;
        while (!closed && left > 0) {
          lock.wait(left);
          left = (until - System.nanoTime()) / 1_000_000;
        }
      } catch (InterruptedException interrupted) {
        Thread.currentThread().interrupt();
        close();
      }
    }
  }

  private SubscribePostbacksRequest nextRequest() {
    if (!connected) {
      connected = true;
      boolean latest =
          switch (base.getStartCase()) {
            case START_NOT_SET -> true;
            case POSITION -> base.getPosition() != StartPosition.START_POSITION_EARLIEST;
            default -> false;
          };
      if (base.getGroup().isEmpty() && latest) {
        Instant now = Instant.now();
        since =
            Timestamp.newBuilder().setSeconds(now.getEpochSecond()).setNanos(now.getNano()).build();
      }
      return base;
    }
    if (!base.getGroup().isEmpty()) {
      return base;
    }
    if (lastSequence >= 0) {
      return base.toBuilder().setAfterSequence(lastSequence).build();
    }
    if (since != null) {
      return base.toBuilder().setSinceTime(since).build();
    }
    return base;
  }
}
