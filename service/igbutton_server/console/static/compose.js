// Compose & preview. The server holds the rules: every change posts the request to
// /console/compose/validate (the ValidateButtonTemplate code) and shows what it answers.
// Text from the user or the server is only ever set with textContent, never as HTML.
"use strict";

(() => {
  const root = document.getElementById("compose");
  if (!root) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const textMax = Number(root.dataset.textMax);
  const titleMax = Number(root.dataset.titleMax);
  const buttonsMax = Number(root.dataset.buttonsMax);
  const field = (name) => root.querySelector(`[name="${name}"]`);
  const slots = [...root.querySelectorAll(".button-slot")];
  const jsonBox = field("json");
  const status = document.getElementById("status");
  let slotOfIndex = []; // request button index -> its fieldset
  let extraButtons = []; // buttons beyond the slots, from pasted JSON
  let checks = 0;
  let timer = null;

  const codePoints = (s) => Array.from(s).length;
  // Where Meta cuts: the limits of send/validation.py, in code points, with an ellipsis.
  const cut = (s, max) => {
    const cps = Array.from(s);
    return cps.length > max ? cps.slice(0, max).join("") + "…" : s;
  };

  function buildRequest() {
    const buttons = [];
    slotOfIndex = [];
    for (const slot of slots) {
      const kind = slot.querySelector('[name="kind"]').value;
      slot.dataset.kind = kind;
      if (!kind) continue;
      const button = { title: slot.querySelector('[name="title"]').value };
      if (kind === "postback") {
        button.postback = { payload: slot.querySelector('[name="payload"]').value };
      } else {
        button.url = { url: slot.querySelector('[name="url"]').value };
      }
      slotOfIndex.push(slot);
      buttons.push(button);
    }
    buttons.push(...extraButtons);
    const request = {
      recipientId: field("recipient_id").value,
      template: { text: field("text").value, buttons },
    };
    if (field("account_id").value) request.accountId = field("account_id").value;
    if (field("human_agent").checked) request.tag = "MESSAGE_TAG_HUMAN_AGENT";
    return request;
  }

  function showCounts() {
    const text = field("text").value;
    const count = root.querySelector('[data-count-for="text"]');
    count.textContent = `${codePoints(text)}/${textMax}`;
    count.classList.toggle("over", codePoints(text) > textMax);
    for (const slot of slots) {
      const title = slot.querySelector('[name="title"]').value;
      const c = slot.querySelector('[data-count-for="title"]');
      c.textContent = `${codePoints(title)}/${titleMax}`;
      c.classList.toggle("over", codePoints(title) > titleMax);
    }
  }

  function renderPreview(request) {
    document.getElementById("preview-text").textContent = cut(request.template.text, textMax);
    const buttons = request.template.buttons.slice(0, buttonsMax).map((b) => {
      const el = document.createElement("span");
      el.className = "bubble-button";
      el.textContent = cut(b.title, titleMax);
      return el;
    });
    document.getElementById("preview-buttons").replaceChildren(...buttons);
  }

  function clearViolations() {
    for (const el of root.querySelectorAll(".violation")) el.textContent = "";
    for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function placeFor(violation) {
    const m = /^template\.buttons\[(\d+)\]\.(.+)$/.exec(violation.field);
    if (m) {
      const slot = slotOfIndex[Number(m[1])];
      const el = slot && slot.querySelector(`[data-button-field="${CSS.escape(m[2])}"]`);
      if (el) return { el, input: slot.querySelector(`[name="${inputOf(m[2])}"]`) };
      return null;
    }
    const el = root.querySelector(`.violation[data-field="${CSS.escape(violation.field)}"]`);
    if (!el) return null;
    const name = { "template.text": "text", account_id: "account_id", recipient_id: "recipient_id" }[violation.field];
    return { el, input: name ? field(name) : null };
  }

  function inputOf(sub) {
    return { title: "title", "postback.payload": "payload", "url.url": "url", action: "kind" }[sub] || "title";
  }

  function showViolations(violations) {
    clearViolations();
    const other = document.getElementById("other-violations");
    for (const v of violations) {
      const place = placeFor(v);
      const el = place ? place.el : other;
      const line = place ? v.description : `${v.field}: ${v.description}`;
      el.textContent = el.textContent ? `${el.textContent}; ${line}` : line;
      if (place && place.input) place.input.setAttribute("aria-invalid", "true");
    }
  }

  function showAnswer(answer) {
    // An error without field violations (PERMISSION_DENIED for an account this caller may
    // not use) is shown with the others, under the form.
    const violations = answer.violations.length || !answer.error
      ? answer.violations
      : [{ field: answer.error.reason, description: answer.error.message }];
    showViolations(violations);
    const graphUrl = document.getElementById("graph-url");
    const graphJson = document.getElementById("graph-json");
    if (answer.graph) {
      graphUrl.textContent = `${answer.graph.method} ${answer.graph.url}`;
      graphJson.textContent = JSON.stringify(answer.graph.body, null, 2);
    } else {
      graphUrl.textContent = "No request: igbutton would refuse this send.";
      graphJson.textContent = answer.error ? `${answer.error.code} ${answer.error.reason}: ${answer.error.message}` : "";
    }
    const snippets = document.getElementById("snippets");
    snippets.replaceChildren(
      ...Object.entries(answer.snippets || {}).flatMap(([name, code]) => {
        const h = document.createElement("h3");
        h.textContent = name;
        const pre = document.createElement("pre");
        pre.dataset.snippet = name;
        pre.textContent = code;
        return [h, pre];
      }),
    );
    const count = violations.length;
    status.textContent = count ? `${count} violation${count > 1 ? "s" : ""}` : "valid: igbutton would send this";
    root.dataset.state = count ? "invalid" : "valid";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
    return response.json();
  }

  async function check() {
    const mine = ++checks;
    root.dataset.state = "checking";
    let answer;
    try {
      answer = await post("/console/compose/validate", buildRequest());
    } catch (error) {
      status.textContent = `cannot check: ${error.message}`;
      root.dataset.state = "error";
      return;
    }
    if (mine === checks) showAnswer(answer); // an older answer is stale
  }

  function changed() {
    const request = buildRequest();
    showCounts();
    renderPreview(request);
    if (document.activeElement !== jsonBox) jsonBox.value = JSON.stringify(request, null, 2);
    clearTimeout(timer);
    timer = setTimeout(check, 150);
  }

  function loadJson() {
    let request;
    try {
      request = JSON.parse(jsonBox.value);
    } catch (error) {
      showViolations([{ field: "json", description: `not JSON: ${error.message}` }]);
      return;
    }
    const template = request.template || {};
    const buttons = Array.isArray(template.buttons) ? template.buttons : [];
    field("recipient_id").value = request.recipientId ?? request.recipient_id ?? "";
    field("text").value = template.text ?? "";
    const account = request.accountId ?? request.account_id ?? "";
    const select = field("account_id");
    if (account && ![...select.options].some((o) => o.value === account)) select.add(new Option(account, account));
    select.value = account;
    field("human_agent").checked = String(request.tag ?? "").endsWith("HUMAN_AGENT") || request.tag === 1;
    slots.forEach((slot, i) => {
      const b = buttons[i];
      const set = (name, value) => { slot.querySelector(`[name="${name}"]`).value = value; };
      set("kind", b ? (b.url ? "url" : "postback") : "");
      set("title", b ? b.title ?? "" : "");
      set("payload", b && b.postback ? b.postback.payload ?? "" : "");
      set("url", b && b.url ? b.url.url ?? "" : "");
    });
    extraButtons = buttons.slice(slots.length);
    changed();
  }

  async function send() {
    const result = document.getElementById("send-result");
    result.textContent = "sending…";
    let answer;
    try {
      answer = await post("/console/compose/send", buildRequest());
    } catch (error) {
      result.textContent = `not sent: ${error.message}`;
      return;
    }
    if (answer.sent) {
      const link = document.createElement("a");
      link.href = "/console/conversation";
      link.textContent = "see it in the conversation";
      result.replaceChildren(`Sent: message ${answer.sent.message_id} — `, link);
      result.dataset.messageId = answer.sent.message_id;
    } else {
      showViolations(answer.violations);
      result.textContent = `not sent: ${answer.error.code} ${answer.error.reason}: ${answer.error.message}`;
    }
  }

  root.addEventListener("input", (event) => { if (event.target !== jsonBox) changed(); });
  root.addEventListener("change", (event) => { if (event.target !== jsonBox) changed(); });
  document.getElementById("apply-json").addEventListener("click", loadJson);
  const sendButton = document.getElementById("send");
  if (sendButton) sendButton.addEventListener("click", send);
  changed();
})();
