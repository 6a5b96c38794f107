"""NATS JetStream backend (imports ``nats`` lazily: nothing here is loaded by emit or status on the spool)."""
