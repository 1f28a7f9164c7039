"""The postback path: Meta's webhook in, the durable log, the gRPC stream out."""
