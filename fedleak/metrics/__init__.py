"""The evaluation stage: score a reconstruction against the true images (:mod:`.scores`) and show it
(:mod:`.plots`). Runs only after the attack has returned."""
from fedleak.metrics.scores import (  # noqa: F401
    evaluate, haarpsi, label_accuracy, masked_psnr, masked_ssim, match, perceptual, psnr, rgb_to_ycrcb_uint8,
    ssim, ssim_rog,
)
