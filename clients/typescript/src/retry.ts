import { Code, ConnectError, type Interceptor, type UnaryRequest } from "@connectrpc/connect";

import { newRequestId } from "./buttons.js";
import type { SendButtonTemplateRequest } from "./gen/igbutton/v1/send_service_pb.js";

/**
 * The gRPC service config the Go and Java clients install, as an object: the same JSON as
 * `clients/service_config.json` in the repository (a test keeps them equal). Connect has
 * no service-config support, so {@link retryInterceptor} carries out its `retryPolicy`.
 */
export const SERVICE_CONFIG = {
  methodConfig: [
    {
      name: [
        { service: "igbutton.v1.SendService", method: "SendButtonTemplate" },
        { service: "igbutton.v1.SendService", method: "ValidateButtonTemplate" },
        { service: "igbutton.v1.PostbackService", method: "AckPostbacks" },
      ],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: "0.1s",
        maxBackoff: "5s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
} as const;

const policy = SERVICE_CONFIG.methodConfig[0].retryPolicy;
const retried = new Set(
  SERVICE_CONFIG.methodConfig[0].name.map(({ service, method }) => `${service}/${method}`),
);
const seconds = (duration: string): number => Number(duration.replace(/s$/, ""));

/**
 * Gives a SendButtonTemplate without a request_id a fresh one before anything else runs, so
 * that a retry (which resends this very message) is idempotent, as the Python client's
 * sends are. The caller's message is not modified: set `requestId` yourself to make your
 * own repeats of a send idempotent too.
 */
export const requestIdInterceptor: Interceptor = (next) => (req) => {
  if (
    !req.stream &&
    req.service.typeName === "igbutton.v1.SendService" &&
    req.method.name === "SendButtonTemplate"
  ) {
    const message = req.message as SendButtonTemplateRequest;
    if (message.requestId === "") {
      const withId: SendButtonTemplateRequest = { ...message, requestId: newRequestId() };
      return next({ ...req, message: withId } as UnaryRequest);
    }
  }
  return next(req);
};

/**
 * The retryPolicy of {@link SERVICE_CONFIG}, as gRPC carries it out: a unary call to one of
 * its methods that fails with UNAVAILABLE is repeated (with the same request message, so a
 * send keeps its request_id) up to 5 attempts in all, retry *n* after a random delay up to
 * min(5 s, 0.1 s × 2ⁿ), and never past the call's deadline or once it is aborted.
 * Everything else, DEADLINE_EXCEEDED and UNKNOWN included, is never retried: a send may have
 * gone out.
 */
export const retryInterceptor: Interceptor = (next) => async (req) => {
  if (req.stream || !retried.has(`${req.service.typeName}/${req.method.name}`)) {
    return next(req);
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await next(req);
    } catch (err) {
      if (!isUnavailable(err, req.signal) || attempt >= policy.maxAttempts) throw err;
      const bound = Math.min(
        seconds(policy.maxBackoff),
        seconds(policy.initialBackoff) * policy.backoffMultiplier ** (attempt - 1),
      );
      if (!(await sleep(Math.random() * bound * 1000, req.signal))) {
        throw err; // aborted (or the deadline passed) while waiting
      }
    }
  }
};

/**
 * Whether a call failed with UNAVAILABLE. connect-node reports a connection lost under a
 * call (a server restart, a proxy closing it) as CANCELED, from the HTTP/2 stream's CANCEL
 * code, where grpc-go and grpc-java report UNAVAILABLE: a CANCELED the caller did not cause
 * (its signal is not aborted) counts as UNAVAILABLE here, so all clients retry alike.
 */
export function isUnavailable(err: unknown, signal: AbortSignal): boolean {
  if (signal.aborted) return false;
  const code = ConnectError.from(err).code;
  return code === Code.Unavailable || code === Code.Canceled;
}

/** Waits `ms`; false if `signal` aborted first. */
export function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve(false);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
