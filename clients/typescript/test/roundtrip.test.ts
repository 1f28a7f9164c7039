// Sends a template through a running igbutton (started with --sandbox), has
// the sandbox tap its postback button and expects the postback on a
// subscription. tests/clients/test_roundtrip.py runs it with IGBUTTON_ADDR
// and IGBUTTON_SANDBOX_URL set; without them it is skipped.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  StartPosition,
  TokenStatus,
  buttonTemplate,
  createIgbuttonClient,
  errorDetails,
  newRequestId,
  postbackButton,
  urlButton,
} from "../src/index.js";

const addr = process.env["IGBUTTON_ADDR"];
const sandboxUrl = process.env["IGBUTTON_SANDBOX_URL"];
const skip =
  addr && sandboxUrl
    ? false
    : "IGBUTTON_ADDR and IGBUTTON_SANDBOX_URL are not set (point them at `igbutton-server --sandbox`)";

interface TapResult {
  mid: string;
  payload: string;
  title: string;
  webhook_status: number;
}

async function tap(messageId: string, buttonIndex: number, signal: AbortSignal): Promise<TapResult> {
  const res = await fetch(`${sandboxUrl!.replace(/\/$/, "")}/_sandbox/tap`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ message_id: messageId, button_index: buttonIndex }),
    signal,
  });
  const text = await res.text();
  assert.equal(res.status, 200, `sandbox tap: HTTP ${res.status}: ${text}`);
  return JSON.parse(text) as TapResult;
}

test("send, tap and receive the postback", { skip, timeout: 60_000 }, async () => {
  const ig = createIgbuttonClient(addr!);
  const abort = new AbortController();
  try {
    const payload = `ts-roundtrip-${newRequestId()}`;
    // The unique payload as prefix plus EARLIEST make the test independent of
    // when the server registers the stream relative to the tap.
    const stream = ig.postbacks
      .subscribePostbacks(
        { payloadPrefix: payload, start: { case: "position", value: StartPosition.EARLIEST } },
        { signal: abort.signal },
      )
      [Symbol.asyncIterator]();
    const first = stream.next();
    first.catch(() => undefined); // observed below; avoid an unhandled rejection meanwhile

    let messageId: string;
    try {
      const sent = await ig.send.sendButtonTemplate({
        recipientId: "1254477777772919",
        requestId: newRequestId(),
        template: buttonTemplate(
          "Round trip from TypeScript",
          postbackButton("Yes", payload),
          urlButton("Docs", "https://example.com/docs"),
        ),
      });
      messageId = sent.messageId;
    } catch (err) {
      assert.fail(`sendButtonTemplate: ${JSON.stringify(errorDetails(err))}`);
    }
    assert.notEqual(messageId, "", "sendButtonTemplate returned no message_id");

    const tapped = await tap(messageId, 0, abort.signal);
    assert.equal(tapped.payload, payload);

    const event = await first;
    assert.equal(event.done, false, "the stream ended before the postback arrived");
    const postback = event.value?.postback;
    assert.equal(postback?.payload, payload);
    assert.equal(postback?.title, "Yes");
    assert.ok((postback?.sequence ?? 0n) > 0n, "postback has no sequence number");

    // The one configured account (the sandbox's), its token status included.
    const got = await ig.accounts.getAccount({});
    assert.notEqual(got.account?.id ?? "", "", "getAccount returned no account id");
    assert.equal(got.account?.tokenStatus, TokenStatus.OK);
  } finally {
    abort.abort();
  }
});
