"""Decode the images a server run saved, for the server tests."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def saved_rgb(client, result) -> list[tuple[str, np.ndarray]]:
    """(file name, H x W x 3 uint8 array) for every image the run's output nodes saved, in output order."""
    return [(name, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))) for name, data in client.images(result)]
