"""The thin gRPC layer over retriever.core: servicers (protobuf ↔ domain types), error mapping, reflection, the server."""
