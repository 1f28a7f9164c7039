import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, type GrpcTransportOptions } from "@connectrpc/connect-node";

import { AccountService } from "./gen/igbutton/v1/account_service_pb.js";
import { GroupService, type Group } from "./gen/igbutton/v1/group_service_pb.js";
import {
  PostbackService,
  type SubscribePostbacksRequestSchema,
} from "./gen/igbutton/v1/postback_service_pb.js";
import { SendService } from "./gen/igbutton/v1/send_service_pb.js";
import { requestIdInterceptor, retryInterceptor } from "./retry.js";
import { Subscription, type SubscribeOptions } from "./subscription.js";

/** Options for {@link createIgbuttonClient}. */
export interface IgbuttonClientOptions {
  /**
   * Sent as `authorization: Bearer <token>` on every call, when igbutton has
   * caller authentication configured. Use an https:// address with it unless
   * the network is trusted: over http:// the token travels in clear.
   */
  bearerToken?: string;
  /**
   * Extra Connect interceptors (logging, tracing, ...), run in order, after the client's own
   * (a send's request_id is set, and each retry attempt passes through them).
   */
  interceptors?: Interceptor[];
  /**
   * Retry UNAVAILABLE on the calls that are safe to repeat, as {@link SERVICE_CONFIG} says
   * (default true); false turns retries off.
   */
  retry?: boolean;
  /** Node HTTP/2 options, for example TLS client certificates for mutual TLS. */
  nodeOptions?: GrpcTransportOptions["nodeOptions"];
}

/** Typed clients for both igbutton services, sharing one HTTP/2 connection. */
export interface IgbuttonClient {
  /** SendService: sendButtonTemplate, validateButtonTemplate. */
  send: Client<typeof SendService>;
  /** PostbackService: subscribePostbacks (a server stream), ackPostbacks. */
  postbacks: Client<typeof PostbackService>;
  /** AccountService: listAccounts, getAccount, checkAccount, subscribeAccount. */
  accounts: Client<typeof AccountService>;
  /**
   * A SubscribePostbacks stream that reconnects after a server restart or a lost connection
   * and resumes where it left off: see {@link Subscription}.
   */
  subscribe(
    request: MessageInitShape<typeof SubscribePostbacksRequestSchema>,
    options?: SubscribeOptions,
  ): Subscription;
  /** GroupService: every operation on consumer groups (admin callers). */
  groups: Client<typeof GroupService>;
  /** A group's configuration and state ("billing" is short for "groups/billing"). */
  getGroup(name: string): Promise<Group>;
  /**
   * Delivers a group's dead letters with these sequences again, from attempt
   * 1 (none given: every dead letter); resolves to how many were redriven.
   */
  redriveDeadLetters(name: string, sequences?: bigint[]): Promise<number>;
}

/** A group's resource name: a plain name is short for "groups/<name>". */
export function groupName(name: string): string {
  return name.includes("/") ? name : `groups/${name}`;
}

/**
 * Creates a client for the igbutton server at `address`: "http://host:port"
 * for plaintext (igbutton's default listener) or "https://host:port" for TLS.
 * A bare "host:port" means plaintext. Connects on the first call.
 *
 * A send without a request_id gets one, and the calls that are safe to repeat
 * (SendButtonTemplate, ValidateButtonTemplate, AckPostbacks) are retried after UNAVAILABLE
 * with the same message, so a retried send goes out at most once.
 */
export function createIgbuttonClient(
  address: string,
  options: IgbuttonClientOptions = {},
): IgbuttonClient {
  // Outermost first: the request_id is fixed before the retry loop repeats the call.
  const interceptors: Interceptor[] = [requestIdInterceptor];
  if (options.retry ?? true) interceptors.push(retryInterceptor);
  const token = options.bearerToken;
  if (token !== undefined && token !== "") {
    interceptors.push((next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  interceptors.push(...(options.interceptors ?? []));
  const transport = createGrpcTransport({
    baseUrl: /^https?:\/\//.test(address) ? address : `http://${address}`,
    interceptors,
    ...(options.nodeOptions === undefined ? {} : { nodeOptions: options.nodeOptions }),
  });
  const postbacks = createClient(PostbackService, transport);
  const groups = createClient(GroupService, transport);
  return {
    send: createClient(SendService, transport),
    postbacks,
    accounts: createClient(AccountService, transport),
    subscribe: (request, subscribeOptions) =>
      new Subscription(postbacks, request, subscribeOptions),
    groups,
    async getGroup(name: string): Promise<Group> {
      const { group } = await groups.getGroup({ name: groupName(name) });
      if (group === undefined) throw new Error(`GetGroup answered no group for ${name}`);
      return group;
    },
    async redriveDeadLetters(name: string, sequences: bigint[] = []): Promise<number> {
      const answer = await groups.redriveDeadLetters({
        name: groupName(name),
        sequences,
        all: sequences.length === 0,
      });
      return answer.redrivenCount;
    },
  };
}
