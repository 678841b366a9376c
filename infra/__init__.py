"""Local development infrastructure: the stack launcher and its Kafka build."""
