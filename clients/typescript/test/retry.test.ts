import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { test } from "node:test";

import { type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  Code,
  ConnectError,
  SERVICE_CONFIG,
  SendService,
  createIgbuttonClient,
} from "../src/index.js";

test("SERVICE_CONFIG is clients/service_config.json", async () => {
  const shared: unknown = JSON.parse(
    await readFile(new URL("../../../service_config.json", import.meta.url), "utf8"),
  );
  assert.deepEqual(SERVICE_CONFIG, shared);
});

/** A real gRPC server on loopback whose SendButtonTemplate answers `codes` in turn, then OK. */
async function flakySend(codes: Code[]): Promise<{ url: string; ids: string[]; close: () => Promise<void> }> {
  const ids: string[] = [];
  const routes = (router: ConnectRouter) =>
    router.service(SendService, {
      sendButtonTemplate(req) {
        ids.push(req.requestId);
        const code = codes[ids.length - 1];
        if (code !== undefined) throw new ConnectError("injected", code);
        return { messageId: "m1", recipientId: req.recipientId };
      },
    });
  const server = http2.createServer(connectNodeAdapter({ routes }));
  // close() waits for open sessions, and the client keeps its connection: end them.
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    ids,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const session of sessions) session.destroy();
      }),
  };
}

for (const given of ["", "caller-chosen-id"]) {
  test(`a send retried after UNAVAILABLE keeps one request_id (given: "${given}")`, async () => {
    const server = await flakySend([Code.Unavailable, Code.Unavailable]);
    const ig = createIgbuttonClient(server.url);
    try {
      const request = { recipientId: "1254477777772919", requestId: given };
      const sent = await ig.send.sendButtonTemplate(request);
      assert.equal(sent.messageId, "m1");
      assert.equal(server.ids.length, 3, "two UNAVAILABLE, then OK");
      assert.notEqual(server.ids[0], "");
      assert.deepEqual(server.ids, Array(3).fill(given === "" ? server.ids[0] : given));
      assert.equal(request.requestId, given, "the caller's request was modified");
    } finally {
      await server.close();
    }
  });
}

test("other codes are not retried, nor is anything with retry: false", async () => {
  const server = await flakySend([Code.Unknown, Code.Unavailable]);
  try {
    const ig = createIgbuttonClient(server.url);
    await assert.rejects(ig.send.sendButtonTemplate({}), (e) => ConnectError.from(e).code === Code.Unknown);
    assert.equal(server.ids.length, 1);
    const noRetry = createIgbuttonClient(server.url, { retry: false });
    await assert.rejects(noRetry.send.sendButtonTemplate({}), (e) => ConnectError.from(e).code === Code.Unavailable);
    assert.equal(server.ids.length, 2);
  } finally {
    await server.close();
  }
});
