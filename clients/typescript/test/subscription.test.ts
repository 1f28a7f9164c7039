import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { test } from "node:test";

import { clone } from "@bufbuild/protobuf";
import { type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  Code,
  ConnectError,
  PostbackService,
  SubscribePostbacksRequestSchema,
  createIgbuttonClient,
  type SubscribePostbacksRequest,
} from "../src/index.js";

interface StreamScript {
  sequences: bigint[];
  end?: Code; // undefined: a clean end
}

/** A real gRPC server on loopback answering the n-th subscription with script[n]. */
async function scriptedPostbacks(script: StreamScript[]) {
  const requests: SubscribePostbacksRequest[] = [];
  const routes = (router: ConnectRouter) =>
    router.service(PostbackService, {
      async *subscribePostbacks(req) {
        requests.push(clone(SubscribePostbacksRequestSchema, req));
        const step = script[requests.length - 1];
        if (step === undefined) throw new ConnectError("script over", Code.FailedPrecondition);
        for (const sequence of step.sequences) yield { postback: { sequence } };
        if (step.end !== undefined) throw new ConnectError("scripted end", step.end);
      },
    });
  const server = http2.createServer(connectNodeAdapter({ routes }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const session of sessions) session.destroy();
      }),
  };
}

const fast = { initialBackoffMs: 1, maxBackoffMs: 5 };

test("a broadcast resumes after the last sequence; other errors end it", async () => {
  const server = await scriptedPostbacks([
    { sequences: [5n, 6n], end: Code.Unavailable },
    { sequences: [6n, 7n], end: Code.Canceled }, // the server resends 6; CANCELED from it
    { sequences: [8n], end: Code.PermissionDenied },
  ]);
  try {
    const ig = createIgbuttonClient(server.url);
    const sub = ig.subscribe({ payloadPrefix: "P" }, fast);
    const got: bigint[] = [];
    await assert.rejects(
      (async () => {
        for await (const event of sub) got.push(event.postback?.sequence ?? 0n);
      })(),
      (e) => ConnectError.from(e).code === Code.PermissionDenied,
    );
    assert.deepEqual(got, [5n, 6n, 7n, 8n]);
    assert.equal(sub.lastSequence, 8n);
    const starts = server.requests.map((r) => r.start);
    assert.deepEqual(starts, [
      { case: undefined },
      { case: "afterSequence", value: 6n },
      { case: "afterSequence", value: 7n },
    ]);
    assert.ok(server.requests.every((r) => r.payloadPrefix === "P"));
  } finally {
    await server.close();
  }
});

test("a subscription from latest resumes since it first subscribed", async () => {
  const server = await scriptedPostbacks([{ sequences: [], end: Code.Unavailable }, { sequences: [3n] }]);
  try {
    const before = Date.now();
    const got: bigint[] = [];
    for await (const event of createIgbuttonClient(server.url).subscribe({}, fast)) {
      got.push(event.postback?.sequence ?? 0n);
    }
    assert.deepEqual(got, [3n]); // then the clean end stopped the iteration
    const resumed = server.requests[1]?.start;
    assert.equal(resumed?.case, "sinceTime");
    const since = Number(resumed.value.seconds) * 1000;
    assert.ok(since >= before - 1000 && since <= Date.now(), `since ${since}, subscribed ${before}`);
  } finally {
    await server.close();
  }
});

test("a group rejoins unchanged and keeps redeliveries", async () => {
  const server = await scriptedPostbacks([
    { sequences: [4n], end: Code.Unavailable },
    { sequences: [4n] },
  ]);
  try {
    const got: bigint[] = [];
    for await (const event of createIgbuttonClient(server.url).subscribe({ group: "g" }, fast)) {
      got.push(event.postback?.sequence ?? 0n);
    }
    assert.deepEqual(got, [4n, 4n]);
    assert.ok(server.requests.every((r) => r.group === "g" && r.start.case === undefined));
  } finally {
    await server.close();
  }
});
