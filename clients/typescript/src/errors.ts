import { Code, ConnectError } from "@connectrpc/connect";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { ErrorReason } from "./gen/igbutton/v1/errors_pb.js";

/** The google.rpc.ErrorInfo domain of igbutton's own errors. */
export const ERROR_DOMAIN = "igbutton";

/** One broken rule of a request, at a path such as "template.buttons[1].title". */
export interface FieldViolation {
  field: string;
  description: string;
}

/** An igbutton error decoded (AIP-193). */
export interface ErrorDetails {
  /** The gRPC status code. */
  code: Code;
  /** The status message, without Connect's "[code]" prefix. */
  message: string;
  /** ErrorInfo.reason in UPPER_SNAKE ("RATE_LIMITED"); "" without ErrorInfo. */
  reason: string;
  /** The reason as the contract's enum; UNSPECIFIED for other domains. */
  errorReason: ErrorReason;
  /** ErrorInfo.domain: "igbutton" for igbutton's own errors. */
  domain: string;
  /** ErrorInfo.metadata: graphCode, graphSubcode, fbtraceId for Graph errors. */
  metadata: Record<string, string>;
  /** Every google.rpc.BadRequest field violation. */
  violations: FieldViolation[];
  /** google.rpc.RetryInfo's delay in milliseconds, when the status had one. */
  retryDelayMs?: number;
}

/**
 * Decodes the error thrown by any igbutton call. Anything that is not a
 * Connect error is reported as code Unknown with its message.
 */
export function errorDetails(err: unknown): ErrorDetails {
  const ce = ConnectError.from(err);
  const details: ErrorDetails = {
    code: ce.code,
    message: ce.rawMessage,
    reason: "",
    errorReason: ErrorReason.UNSPECIFIED,
    domain: "",
    metadata: {},
    violations: [],
  };
  const info = ce.findDetails(ErrorInfoSchema)[0];
  if (info !== undefined) {
    details.reason = info.reason;
    details.domain = info.domain;
    details.metadata = { ...info.metadata };
    if (info.domain === ERROR_DOMAIN) {
      const value = (ErrorReason as unknown as Record<string, number | undefined>)[info.reason];
      details.errorReason = value ?? ErrorReason.UNSPECIFIED;
    }
  }
  for (const bad of ce.findDetails(BadRequestSchema)) {
    for (const v of bad.fieldViolations) {
      details.violations.push({ field: v.field, description: v.description });
    }
  }
  const retry = ce.findDetails(RetryInfoSchema)[0];
  if (retry?.retryDelay !== undefined) {
    details.retryDelayMs =
      Number(retry.retryDelay.seconds) * 1000 + Math.round(retry.retryDelay.nanos / 1e6);
  }
  return details;
}
