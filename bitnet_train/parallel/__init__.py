"""Multi-process training: the FSDP2 and DeepSpeed ZeRO strategies, full-weight access under
sharding, and consolidation of every strategy's checkpoint into one Lightning checkpoint."""
