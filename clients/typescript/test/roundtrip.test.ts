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
// tests/clients/harness.py: a proxy that loses one answer on request, and a control API.
const flakyAddr = process.env["IGBUTTON_FLAKY_ADDR"];
const controlUrl = process.env["IGBUTTON_CONTROL_URL"];
const skip =
  addr && sandboxUrl && flakyAddr && controlUrl
    ? false
    : "IGBUTTON_ADDR, IGBUTTON_SANDBOX_URL, IGBUTTON_FLAKY_ADDR and IGBUTTON_CONTROL_URL are not set (tests/clients/test_roundtrip.py sets them)";

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

async function control(method: "GET" | "POST", path: string): Promise<unknown> {
  const res = await fetch(`${controlUrl!.replace(/\/$/, "")}${path}`, { method });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${path}: HTTP ${res.status}: ${text}`);
  return text === "" ? undefined : JSON.parse(text);
}

interface SandboxMessage {
  message_id: string;
  accepted: boolean;
  body: unknown;
}

/** The ids of the messages the sandbox accepted whose template text is `text`. */
async function acceptedWithText(text: string): Promise<string[]> {
  const res = await fetch(`${sandboxUrl!.replace(/\/$/, "")}/_sandbox/messages`);
  assert.equal(res.status, 200);
  const { messages } = (await res.json()) as { messages: SandboxMessage[] };
  return messages
    .filter((m) => m.accepted && JSON.stringify(m.body).includes(text))
    .map((m) => m.message_id);
}

// igbutton sends the message, then the connection is lost before its answer arrives
// (UNAVAILABLE). The client retries with the request_id it set, so igbutton answers from its
// idempotency record and Instagram (the sandbox) receives the message once.
test("a send retried after a lost answer goes out once", { skip, timeout: 60_000 }, async () => {
  const ig = createIgbuttonClient(flakyAddr!);
  await control("POST", "/drop-next-answer");
  const text = `TypeScript retry ${newRequestId()}`;
  // No requestId: the client must set one itself, or the retry would send twice.
  const sent = await ig.send.sendButtonTemplate({
    recipientId: "1254477777772919",
    template: buttonTemplate(text, postbackButton("Yes", "ts-retry")),
  });
  const { dropped } = (await control("GET", "/drops")) as { dropped: number };
  assert.ok(dropped >= 1, "the proxy dropped no answer: the test injected nothing");
  assert.deepEqual(await acceptedWithText(text), [sent.messageId]);
});

// A subscription receives one postback; igbutton is stopped and a new process started on the
// same port and SQLite file; two more postbacks are stored before the subscription reads
// again. It must reconnect and deliver exactly those two, in order.
test("a subscription resumes after a restart without gap or duplicate", { skip, timeout: 90_000 }, async () => {
  const ig = createIgbuttonClient(addr!);
  const abort = new AbortController();
  const prefix = `ts-resume-${newRequestId()}`;
  let disconnects = 0;
  const sub = ig.subscribe(
    { payloadPrefix: prefix, start: { case: "position", value: StartPosition.EARLIEST } },
    { signal: abort.signal, onDisconnect: () => disconnects++ },
  );
  const events = sub[Symbol.asyncIterator]();
  const sendAndTap = async (payload: string) => {
    const sent = await ig.send.sendButtonTemplate({
      recipientId: "1254477777772919",
      template: buttonTemplate("Resume from TypeScript", postbackButton("Yes", payload)),
    });
    const tapped = await tap(sent.messageId, 0, abort.signal);
    assert.equal(tapped.webhook_status, 200);
  };
  const next = async () => {
    const step = await events.next();
    assert.equal(step.done, false, "the subscription ended");
    return step.value!.postback!;
  };
  try {
    await sendAndTap(`${prefix}-1`);
    const first = await next();
    assert.equal(first.payload, `${prefix}-1`);

    await control("POST", "/restart");
    // Stored while the subscription is disconnected: a resume from "latest" would lose
    // them, one from the start would repeat the first.
    await sendAndTap(`${prefix}-2`);
    await sendAndTap(`${prefix}-3`);

    let previous = first.sequence;
    for (const want of [`${prefix}-2`, `${prefix}-3`]) {
      const got = await next();
      assert.equal(got.payload, want);
      assert.ok(got.sequence > previous, `sequence ${got.sequence} after ${previous}`);
      previous = got.sequence;
    }
    assert.ok(disconnects > 0, "the subscription never saw the restart");
    assert.equal(sub.lastSequence, previous);
  } finally {
    abort.abort();
    await events.return(undefined);
  }
});

test("dead-letter a group's postback, read the group, redrive it", { skip, timeout: 60_000 }, async () => {
  const ig = createIgbuttonClient(addr!);
  const abort = new AbortController();
  try {
    const id = newRequestId();
    const group = `ts-${id.slice(0, 8)}`;
    const payload = `ts-group-${id}`;
    const stream = ig.postbacks
      .subscribePostbacks(
        { payloadPrefix: payload, group, start: { case: "position", value: StartPosition.EARLIEST } },
        { signal: abort.signal },
      )
      [Symbol.asyncIterator]();
    const first = stream.next();
    first.catch(() => undefined);
    const sent = await ig.send.sendButtonTemplate({
      recipientId: "1254477777772919",
      requestId: newRequestId(),
      template: buttonTemplate("Group round trip from TypeScript", postbackButton("Yes", payload)),
    });
    await tap(sent.messageId, 0, abort.signal);

    // Nacked on every attempt until the group dead-letters it.
    let next = first;
    let sequence = 0n;
    for (let attempt = 1; ; attempt++) {
      const event = await next;
      assert.equal(event.done, false, "the stream ended");
      assert.equal(event.value?.deliveryAttempt, attempt);
      sequence = event.value?.postback?.sequence ?? 0n;
      await ig.postbacks.ackPostbacks({ group, nackIds: [event.value?.ackId ?? ""] });
      const info = await ig.getGroup(group);
      if (info.deadLetterCount === 1n) {
        assert.equal(attempt, info.maxDeliveryAttempts);
        break;
      }
      next = stream.next();
    }

    assert.equal(await ig.redriveDeadLetters(group, [sequence]), 1);
    const again = await stream.next();
    assert.equal(again.value?.postback?.sequence, sequence);
    assert.equal(again.value?.deliveryAttempt, 1);
    await ig.postbacks.ackPostbacks({ group, ackIds: [again.value?.ackId ?? ""] });
  } finally {
    abort.abort();
  }
});
