"""The toy world and the demo model: a procedural, exactly labelled image world (world.py), tiny models built
from ComfyUI's own classes (build.py), and the embedded demo model trained on the world (demo_model.py,
weights/). The demo loader nodes ship it to users; tests, bench, eval and training import it as
`conduit_pack.toyworld`."""
