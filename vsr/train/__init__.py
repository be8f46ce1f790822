"""Training and fine-tuning of generators with the SRGAN and ESRGAN objectives (`vsr train`).

config (TOML schema and validation) -> data (HR patches from images/videos, LR by bicubic,
Real-ESRGAN second-order degradation or a paired folder) -> trainer (PSNR pre-training, GAN
training, EMA, validation, safetensors checkpoints) using losses and metrics. The generator
comes from vsr.models / vsr.weights; the exported `generator.safetensors` loads with
`vsr upscale -m` and `vsr image -m`.
"""
