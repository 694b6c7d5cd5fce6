"""Sensitivity analysis: sampling with the q/k/v statistics hooks (and the copy into the store) against plain
sampling, measured in the same run (issue target: at most 1.2x)."""
from __future__ import annotations

import time

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair


def cases(ctx) -> list[Row]:
    import conduit_pack.patches.tables.analysis as analysis
    import conduit_pack.patches.tables.analysis_math as amath
    import conduit_pack.patches.engine.layers as layers
    base = ctx.model()
    layer_list = layers.attention_layers(base)
    sigmas = analysis.schedule_sigmas(base, ctx.steps, "euler", "normal")
    collector = analysis.StatsCollector(layer_list, sigmas)
    hooked = collector.install(base)
    batch = 2
    store = amath.StatsStore(amath.StoreShape(batch, collector.steps, collector.total_channels))

    def collect_run():
        collector.begin(batch)
        ctx.sample(hooked, batch=batch)
        buf, seen = collector.end()
        store.write_run(range(batch), buf, seen)

    b, p = time_pair(lambda: ctx.sample(base, batch=batch), collect_run, ctx.device, ctx.repeats)
    # grading cost for a 4 groups x 3 images job at these sizes, reported alongside (not part of sampling)
    images = 12
    big = amath.StatsStore(amath.StoreShape(images, collector.steps, collector.total_channels))
    for i in range(0, images, batch):
        big.write_run(range(i, i + batch), store.data[:batch], store.recorded[0])
    t0 = time.perf_counter()
    amath.grade_store(big, [i // 3 for i in range(images)], collector.channels, device=ctx.device)
    grade_s = time.perf_counter() - t0
    big.close()
    store.close()
    return [ctx.row("analysis", "stats_collection_vs_plain_sampling", b, p, target=1.2, steps=ctx.steps,
                    batch=batch, layers=len(layer_list), grade_12_images_s=round(grade_s, 3))]
