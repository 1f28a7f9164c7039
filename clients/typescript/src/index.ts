/**
 * The igbutton client for TypeScript on Node.js: typed stubs generated from
 * proto/igbutton/v1 (protoc-gen-es), served by Connect speaking the gRPC
 * protocol over HTTP/2, plus button builders and an AIP-193 error decoder.
 *
 * @example
 * const ig = createIgbuttonClient("http://localhost:50051");
 * const { messageId } = await ig.send.sendButtonTemplate({
 *   recipientId: "1254477777772919",
 *   requestId: newRequestId(),
 *   template: buttonTemplate("Did it arrive?", postbackButton("Yes", "ANSWER_YES")),
 * });
 */
export { createIgbuttonClient, groupName } from "./client.js";
export type { IgbuttonClient, IgbuttonClientOptions } from "./client.js";
export { buttonTemplate, newRequestId, postbackButton, urlButton } from "./buttons.js";
export { ERROR_DOMAIN, errorDetails } from "./errors.js";
export { SERVICE_CONFIG, requestIdInterceptor, retryInterceptor } from "./retry.js";
export { Subscription } from "./subscription.js";
export type { SubscribeOptions } from "./subscription.js";
export type { ErrorDetails, FieldViolation } from "./errors.js";
export * from "./gen/igbutton/v1/account_service_pb.js";
export * from "./gen/igbutton/v1/button_template_pb.js";
export * from "./gen/igbutton/v1/errors_pb.js";
export * from "./gen/igbutton/v1/group_service_pb.js";
export * from "./gen/igbutton/v1/postback_service_pb.js";
export * from "./gen/igbutton/v1/send_service_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
