"""The `digits` example: a small CNN for scikit-learn's 8x8 handwritten digits."""

from torch import Tensor, nn


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits [batch, 10] for images [batch, 1, 8, 8] scaled to 0..1."""
        return self.classifier(self.features(x))


def build() -> nn.Module:
    return DigitsCNN()
