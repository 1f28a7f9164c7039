// Sends one button template through igbutton and prints the postbacks that
// come back, until interrupted:
//   npm run example -- localhost:50051 1254477777772919
import {
  Code,
  buttonTemplate,
  createIgbuttonClient,
  errorDetails,
  newRequestId,
  postbackButton,
  urlButton,
} from "../src/index.js";

const [addr = "localhost:50051", recipientId = "1254477777772919"] = process.argv.slice(2);
const ig = createIgbuttonClient(addr);
const abort = new AbortController();
process.once("SIGINT", () => abort.abort());

// Subscribe first, so no tap on the message below can be missed.
const printing = (async () => {
  const stream = ig.postbacks.subscribePostbacks({ payloadPrefix: "ANSWER_" }, { signal: abort.signal });
  for await (const { postback } of stream) {
    console.log(`#${postback?.sequence} ${postback?.senderId} tapped "${postback?.title}" -> ${postback?.payload}`);
  }
})();
printing.catch(() => undefined); // its error is reported where it is awaited below

try {
  const { messageId } = await ig.send.sendButtonTemplate({
    recipientId,
    requestId: newRequestId(),
    template: buttonTemplate(
      "Did your parcel arrive?",
      postbackButton("Yes", "ANSWER_YES"),
      postbackButton("No", "ANSWER_NO"),
      urlButton("Track it", "https://example.com/track"),
    ),
  });
  console.log(`sent ${messageId}; tap a button (igbutton tap ${messageId}) or press Ctrl-C`);
  await printing;
} catch (err) {
  if (!abort.signal.aborted) {
    const d = errorDetails(err);
    const violations = d.violations.map((v) => `; ${v.field}: ${v.description}`).join("");
    console.error(`igbutton: ${d.reason || Code[d.code]}: ${d.message}${violations}`);
    process.exitCode = 1;
  }
} finally {
  abort.abort();
}
