"""`mistralrs tune`'s engine: what a model's tensors weigh under each quantization, and what fits here.

Everything here works from metadata (config.json and safetensors headers), never the weights,
so a recommendation for a 70B model costs a few kilobytes of reading.
"""
