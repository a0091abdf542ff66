"""The pure core: health decisions, plan building, IAM, the executor's
interface and shared types. No I/O; imports only config and probes."""
