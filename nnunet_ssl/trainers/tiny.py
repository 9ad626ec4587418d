"""What the tiny variants of every method share (``*_tiny``, for tests and smoke runs on a CPU): 2 epochs of 3
iterations, 1 validation iteration, final validation without mirroring; and the demo variants' schedule.

Variants that only tests need (simulated crashes, resume records) live in ``tests/trainers``."""
TINY_SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}
# scripts/demo.sh: the labelled-only and the semi-supervised ``*_demo`` variants train for the same 800 iterations
# (a few minutes on a 2-core CPU for the demo's 64 x 64 images); 2 validation iterations, as the demo holds out 2 cases
DEMO_SCHEDULE = {"num_epochs": 8, "num_iterations_per_epoch": 100, "num_val_iterations_per_epoch": 2}


class UnmirroredValidation:
    """Mixin for test variants: the final validation predicts without mirroring, which costs 8x the CPU time
    (2^3 flips) and adds no code path of ours; the checkpoints keep nnU-Net's mirroring axes."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        axes, self.inference_allowed_mirroring_axes = self.inference_allowed_mirroring_axes, None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes
