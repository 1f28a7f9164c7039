"""The scale-out engine: every store on NATS JetStream, shared by many replicas."""
