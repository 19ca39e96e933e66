"""Training half of rnnserve: architectures, data, training CLI, export, numpy reference."""
