import { create } from "@bufbuild/protobuf";
import { randomUUID } from "node:crypto";

import {
  ButtonSchema,
  ButtonTemplateSchema,
  type Button,
  type ButtonTemplate,
} from "./gen/igbutton/v1/button_template_pb.js";

/**
 * A button that opens `url` in Instagram's in-app browser. Limits (checked by
 * igbutton): title 1-20 characters; url absolute http(s), at most 2048.
 */
export function urlButton(title: string, url: string): Button {
  return create(ButtonSchema, { title, action: { case: "url", value: { url } } });
}

/**
 * A button whose tap comes back as a postback carrying `payload` (1-1000
 * characters) on PostbackService.subscribePostbacks.
 */
export function postbackButton(title: string, payload: string): Button {
  return create(ButtonSchema, { title, action: { case: "postback", value: { payload } } });
}

/** A button template: `text` (1-640 characters) above one to three buttons. */
export function buttonTemplate(text: string, ...buttons: Button[]): ButtonTemplate {
  return create(ButtonTemplateSchema, { text, buttons });
}

/**
 * A fresh request_id (a random UUID). A send that carries one is idempotent
 * (AIP-155), so it may be retried after UNAVAILABLE without sending twice.
 */
export function newRequestId(): string {
  return randomUUID();
}
