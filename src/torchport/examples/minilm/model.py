"""The `minilm` example: the all-MiniLM-L6-v2 encoder (a 6-layer BERT) in plain PyTorch.

Module names follow the original checkpoint's, so its safetensors weights load as they are.
`forward` returns the last hidden states; the handler pools them into sentence embeddings.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

VOCAB = 30522
HIDDEN = 384
LAYERS = 6
HEADS = 12
INTERMEDIATE = 1536
MAX_POSITIONS = 512
EPS = 1e-12


class Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape

        def heads(h: Tensor) -> Tensor:
            return h.view(b, t, HEADS, HIDDEN // HEADS).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=mask
        )
        return out.transpose(1, 2).reshape(b, t, HIDDEN)


class DenseNorm(nn.Module):
    """A projection, a residual connection and a layer norm."""

    def __init__(self, width_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = SelfAttention()
        self.output = DenseNorm(HIDDEN)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate()
        self.output = DenseNorm(INTERMEDIATE)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class MiniLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings()
        self.encoder = Encoder()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states [batch, tokens, 384] for token ids and a 0/1 mask [batch, tokens]."""
        # Padding tokens get no attention: an additive mask of 0 or the lowest float.
        keep = attention_mask[:, None, None, :].to(torch.bool)
        mask = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
        mask = mask.masked_fill(~keep, torch.finfo(torch.float32).min)
        return self.encoder(self.embeddings(input_ids), mask)


def build() -> nn.Module:
    return MiniLM()
