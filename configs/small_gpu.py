# An 8 GB card: one image per micro-batch, 16 per optimizer step, bf16 autocast, activations recomputed.
BATCH_SIZE = 1
GRADIENT_ACCUMULATION_STEPS = 16
PRECISION = "bf16"
GRADIENT_CHECKPOINTING = True
DATALOADER_WORKERS = 4
