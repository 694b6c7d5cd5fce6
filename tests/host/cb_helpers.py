"""Shared by the Conditional Balance host and server tests: a hand-ranked sensitivity table for the tiny SDXL and a
seeded reference latent."""
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.tables.table as tables
import conduit_pack.patches.engine.layers as layers

TABLE_T = [950, 600, 250]
# Hand rankings per table row, most style-sensitive first, as positions in the tiny SDXL layer list
# [input5, middle0, output0, output1, output2, output3, output4, output5].
Q_RANKS = [[1, 0, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1, 0], [0, 7, 2, 5, 1, 3, 6, 4]]
K_RANKS = [[2, 3, 4, 5, 6, 7, 0, 1], [0, 1, 7, 6, 2, 3, 5, 4], [6, 4, 0, 2, 1, 7, 3, 5]]


TINY_SDXL_KEYS = [("input", 5, 0), ("middle", 0, 0)] + [("output", i, 0) for i in range(6)]


def tiny_keys(model):
    return [layer.key for layer in layers.attention_layers(model)]


def hand_table(model=None, q_ranks=Q_RANKS, k_ranks=K_RANKS, timesteps=TABLE_T):
    """model=None: the tiny SDXL's layers without building it (server tests)."""
    keys = TINY_SDXL_KEYS if model is None else tiny_keys(model)

    def scores(ranks):
        rows = []
        for order in ranks:
            row = [0.0] * len(keys)
            for pos, layer in enumerate(order):
                row[layer] = 0.1 + 0.05 * pos
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64)

    return tables.SensitivityTable("sdxl", "style", keys, list(timesteps), {"q": scores(q_ranks),
                                                                            "k": scores(k_ranks)})


def ref_latent(seed=5, hw=(32, 32)):
    return torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(seed))
