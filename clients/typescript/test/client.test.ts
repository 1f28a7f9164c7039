import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";
import {
  Code,
  ConnectError,
  ErrorReason,
  buttonTemplate,
  errorDetails,
  newRequestId,
  postbackButton,
  urlButton,
} from "../src/index.js";

test("button builders set exactly one action", () => {
  const tpl = buttonTemplate("Pick", urlButton("Visit", "https://example.com"), postbackButton("Yes", "ANSWER_YES"));
  const [url, postback] = tpl.buttons;
  assert.equal(url?.action.case === "url" ? url.action.value.url : undefined, "https://example.com");
  assert.equal(postback?.action.case === "postback" ? postback.action.value.payload : undefined, "ANSWER_YES");
});

test("request ids are fresh UUIDs", () => {
  const a = newRequestId();
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(a, newRequestId());
});

test("errorDetails decodes ErrorInfo, BadRequest and RetryInfo", () => {
  const err = new ConnectError("slow down", Code.ResourceExhausted, undefined, [
    { desc: ErrorInfoSchema, value: { reason: "RATE_LIMITED", domain: "igbutton", metadata: { graphCode: "4" } } },
    {
      desc: BadRequestSchema,
      value: { fieldViolations: [{ field: "template.buttons[1].title", description: "too long" }] },
    },
    { desc: RetryInfoSchema, value: { retryDelay: create(DurationSchema, { seconds: 1n, nanos: 500_000_000 }) } },
  ]);
  const d = errorDetails(err);
  assert.equal(d.code, Code.ResourceExhausted);
  assert.equal(d.message, "slow down");
  assert.equal(d.reason, "RATE_LIMITED");
  assert.equal(d.errorReason, ErrorReason.RATE_LIMITED);
  assert.deepEqual(d.metadata, { graphCode: "4" });
  assert.deepEqual(d.violations, [{ field: "template.buttons[1].title", description: "too long" }]);
  assert.equal(d.retryDelayMs, 1500);
});

test("errorDetails of a plain error", () => {
  const d = errorDetails(new Error("boom"));
  assert.equal(d.code, Code.Unknown);
  assert.equal(d.errorReason, ErrorReason.UNSPECIFIED);
  assert.equal(d.retryDelayMs, undefined);
});
