"""A small dataset of token ids and binary labels for the transformers Trainer tests."""
import torch


class Tokens(torch.utils.data.Dataset):
    """``n`` sequences of ``seq`` ids below ``vocab``, with a label 0 or 1 each, from a fixed seed."""

    def __init__(self, n=64, seq=6, vocab=40):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}
