import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, type GrpcTransportOptions } from "@connectrpc/connect-node";

import { AccountService } from "./gen/igbutton/v1/account_service_pb.js";
import { PostbackService } from "./gen/igbutton/v1/postback_service_pb.js";
import { SendService } from "./gen/igbutton/v1/send_service_pb.js";

/** Options for {@link createIgbuttonClient}. */
export interface IgbuttonClientOptions {
  /**
   * Sent as `authorization: Bearer <token>` on every call, when igbutton has
   * caller authentication configured. Use an https:// address with it unless
   * the network is trusted: over http:// the token travels in clear.
   */
  bearerToken?: string;
  /** Extra Connect interceptors (logging, tracing, ...), run in order. */
  interceptors?: Interceptor[];
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
}

/**
 * Creates a client for the igbutton server at `address`: "http://host:port"
 * for plaintext (igbutton's default listener) or "https://host:port" for TLS.
 * A bare "host:port" means plaintext. Connects on the first call.
 */
export function createIgbuttonClient(
  address: string,
  options: IgbuttonClientOptions = {},
): IgbuttonClient {
  const interceptors: Interceptor[] = [];
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
  return {
    send: createClient(SendService, transport),
    postbacks: createClient(PostbackService, transport),
    accounts: createClient(AccountService, transport),
  };
}
