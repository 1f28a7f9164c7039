"""igbutton server: a gRPC gateway for Instagram button templates and their postbacks."""
