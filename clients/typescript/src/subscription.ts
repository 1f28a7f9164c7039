import { clone, create } from "@bufbuild/protobuf";
import { timestampNow, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";

import {
  PostbackService,
  StartPosition,
  SubscribePostbacksRequestSchema,
  type SubscribePostbacksRequest,
  type SubscribePostbacksResponse,
} from "./gen/igbutton/v1/postback_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { sleep } from "./retry.js";

/** Options for {@link IgbuttonClient.subscribe}. */
export interface SubscribeOptions {
  /** Ends the subscription when aborted (iteration then simply stops). */
  signal?: AbortSignal;
  /** Upper bound of the first reconnect delay in ms (default 200); doubles per failure. */
  initialBackoffMs?: number;
  /** Upper bound of any reconnect delay in ms (default 10 000). */
  maxBackoffMs?: number;
  /** Consecutive failed streams before giving up (the last error is thrown); default: never. */
  maxReconnects?: number;
  /** Called with the error and the delay before the next attempt, each time a stream is lost. */
  onDisconnect?: (error: ConnectError, delayMs: number) => void;
}

/**
 * A SubscribePostbacks stream, as an async iterable, that reconnects after UNAVAILABLE (a
 * server restart or a lost connection) or a CANCELED it did not cause (igbutton cancels calls
 * it has no room for), with growing delays, and resumes where it left off:
 *
 * - a broadcast subscription resumes with `afterSequence` set to the last sequence it
 *   yielded, so nothing is lost and nothing repeats (an event at or below it is dropped,
 *   should the server send it again); if nothing was yielded yet and it started at LATEST,
 *   it resumes from the time it first subscribed;
 * - a group subscription rejoins the group, which keeps its own position; unacknowledged
 *   postbacks come again after their ack deadline.
 *
 * Other errors are thrown from the iteration; a clean end of the stream, `close()` or the
 * signal end it. Iterate it once.
 */
export class Subscription implements AsyncIterable<SubscribePostbacksResponse> {
  readonly #postbacks: Client<typeof PostbackService>;
  readonly #base: SubscribePostbacksRequest;
  readonly #options: SubscribeOptions;
  readonly #abort = new AbortController();
  #lastSequence: bigint | undefined;
  #since: Timestamp | undefined;
  #connected = false;

  constructor(
    postbacks: Client<typeof PostbackService>,
    request: MessageInitShape<typeof SubscribePostbacksRequestSchema>,
    options: SubscribeOptions = {},
  ) {
    this.#postbacks = postbacks;
    this.#base = create(SubscribePostbacksRequestSchema, request);
    this.#options = options;
    const outer = options.signal;
    if (outer !== undefined) {
      if (outer.aborted) this.#abort.abort();
      else outer.addEventListener("abort", () => this.#abort.abort(), { once: true });
    }
  }

  /** The sequence of the last postback yielded (broadcast only). */
  get lastSequence(): bigint | undefined {
    return this.#lastSequence;
  }

  /** Ends the subscription; a pending iteration step finishes with `done`. */
  close(): void {
    this.#abort.abort();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<SubscribePostbacksResponse, void, undefined> {
    const signal = this.#abort.signal;
    const group = this.#base.group !== "";
    let failures = 0;
    while (!signal.aborted) {
      try {
        for await (const event of this.#postbacks.subscribePostbacks(this.#nextRequest(), {
          signal,
        })) {
          failures = 0;
          if (!group) {
            const sequence = event.postback?.sequence ?? 0n;
            if (this.#lastSequence !== undefined && sequence <= this.#lastSequence) continue;
            this.#lastSequence = sequence;
          }
          yield event;
        }
        return; // the server ended the stream cleanly
      } catch (err) {
        if (signal.aborted) return;
        const error = ConnectError.from(err);
        failures++;
        const max = this.#options.maxReconnects;
        if (
          (error.code !== Code.Unavailable && error.code !== Code.Canceled) ||
          (max !== undefined && failures > max)
        ) {
          throw error;
        }
        const bound = Math.min(
          this.#options.maxBackoffMs ?? 10_000,
          (this.#options.initialBackoffMs ?? 200) * 2 ** (failures - 1),
        );
        const delay = bound / 2 + (Math.random() * bound) / 2; // jitter spreads reconnects
        this.#options.onDisconnect?.(error, delay);
        if (!(await sleep(delay, signal))) return;
      }
    }
  }

  #nextRequest(): SubscribePostbacksRequest {
    const request = clone(SubscribePostbacksRequestSchema, this.#base);
    if (!this.#connected) {
      this.#connected = true;
      const start = request.start;
      const latest =
        start.case === undefined ||
        (start.case === "position" && start.value !== StartPosition.EARLIEST);
      if (request.group === "" && latest) this.#since = timestampNow();
      return request;
    }
    if (request.group !== "") return request;
    if (this.#lastSequence !== undefined) {
      request.start = { case: "afterSequence", value: this.#lastSequence };
    } else if (this.#since !== undefined) {
      request.start = { case: "sinceTime", value: this.#since };
    }
    return request;
  }
}
