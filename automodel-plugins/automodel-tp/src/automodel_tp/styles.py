"""The style names a ``plan:`` may use (kept free of torch imports so that config validation stays cheap;
:data:`automodel_tp.plans.STYLES` maps each to its ``ParallelStyle``)."""

STYLE_NAMES: tuple[str, ...] = (
    "colwise",
    "rowwise",
    "colwise_gather_output",
    "colwise_rep",
    "rowwise_rep",
    "rowwise_split_input",
    "embedding_rowwise",
    "embedding_colwise",
    "replicated_with_grad_allreduce",
    "replicate",
    "sequence_parallel",
    "colwise_loss_parallel",
    "shard_sequence",
    "gather_sequence",
    "rowwise_sequence_output",
    "colwise_sequence_input",
    "colwise_sequence_input_loss_parallel",
)
